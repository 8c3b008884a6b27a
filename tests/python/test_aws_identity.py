"""Certificates, CA certificates, policies and their attachments on AWS IoT's control-plane paths,
driven by boto3's `iot` client and the AWS CLI exactly as they talk to AWS (botocore `iot`
2015-05-28: verbs, request URIs, query-string and header members, answers, exception codes).

The records are the ones Shoal's `/api/v1` identity API serves, and they govern MQTT: a
certificate deactivated through `UpdateCertificate` is refused at CONNECT over mutual TLS.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import Shoal
from identity_helpers import ARN, Api, openssl, openssl_ca, openssl_key_csr, openssl_sign, workdir
from mqtt_helpers import V5, Client

boto3 = pytest.importorskip("boto3")
from botocore.exceptions import ClientError  # noqa: E402

ALLOW_ALL = json.dumps({"Version": "2012-10-17",
                        "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]})


def policy_doc(*topics: str) -> str:
    """A policy allowing connect and publishing to the given topics."""
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"},
        {"Effect": "Allow", "Action": "iot:Publish", "Resource": [f"{ARN}:topic/{t}" for t in topics]},
    ]})


def code(e: pytest.ExceptionInfo) -> str:
    return e.value.response["Error"]["Code"]


def status(e: pytest.ExceptionInfo) -> int:
    return e.value.response["ResponseMetadata"]["HTTPStatusCode"]


def write_device(shoal: Shoal, name: str, cert: dict) -> tuple[str, str]:
    d = workdir(shoal)
    crt, key = d / f"{name}.crt", d / f"{name}.key"
    crt.write_text(cert["certificatePem"])
    key.write_text(cert["keyPair"]["PrivateKey"])
    os.chmod(key, 0o600)
    return str(crt), str(key)


def assert_recent(t: dt.datetime) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    assert isinstance(t, dt.datetime) and abs((now - t).total_seconds()) < 120, t


# -- the lifecycle ---------------------------------------------------------------------------------

def test_certificate_lifecycle_governs_mqtt(shoal: Shoal):
    """CreateKeysAndCertificate -> CreatePolicy -> AttachPolicy -> AttachThingPrincipal -> lists ->
    a device connects over mutual TLS -> UpdateCertificate INACTIVE closes it and refuses the next
    CONNECT -> detach -> DeleteCertificate, DeletePolicy, DeleteThing."""
    iot = shoal.boto3("iot")
    iot.create_thing(thingName="truck-1")

    c = iot.create_keys_and_certificate(setAsActive=True)
    cid, arn = c["certificateId"], c["certificateArn"]
    assert arn == f"{ARN}:cert/{cid}" and len(cid) == 64
    assert c["certificatePem"].startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE KEY" in c["keyPair"]["PrivateKey"] and "PUBLIC KEY" in c["keyPair"]["PublicKey"]
    crt, key = write_device(shoal, "truck-1", c)
    assert "CN = AWS IoT Certificate" in openssl("x509", "-in", crt, "-noout", "-subject")

    d = iot.describe_certificate(certificateId=cid)["certificateDescription"]
    assert (d["certificateId"], d["certificateArn"], d["status"], d["certificatePem"], d["ownedBy"]) == \
        (cid, arn, "ACTIVE", c["certificatePem"], "000000000000")
    assert "caCertificateId" not in d   # issued by Shoal's own CA, as AWS describes Amazon's
    assert_recent(d["creationDate"])
    assert d["validity"]["notBefore"] < d["creationDate"] + dt.timedelta(seconds=1) < d["validity"]["notAfter"]

    p = iot.create_policy(policyName="truck", policyDocument=policy_doc("fleet/truck-1/*"))
    assert (p["policyName"], p["policyArn"], p["policyVersionId"]) == ("truck", f"{ARN}:policy/truck", "1")
    assert json.loads(p["policyDocument"]) == json.loads(policy_doc("fleet/truck-1/*"))
    iot.attach_policy(policyName="truck", target=arn)
    iot.attach_thing_principal(thingName="truck-1", principal=arn)

    assert iot.list_thing_principals(thingName="truck-1")["principals"] == [arn]
    assert iot.list_principal_things(principal=arn)["things"] == ["truck-1"]
    assert iot.list_attached_policies(target=arn)["policies"] == \
        [{"policyName": "truck", "policyArn": f"{ARN}:policy/truck"}]
    assert iot.list_targets_for_policy(policyName="truck")["targets"] == [arn]
    assert [x["certificateId"] for x in iot.list_certificates()["certificates"]] == [cid]
    # The same records through Shoal's own API.
    api = Api(shoal)
    assert api.ok("GET", f"/api/v1/certificates/{cid}/policies")["policies"] == ["truck"]

    dev = shoal.track(Client(shoal, tls=True, client_cert=(crt, key), client_id="truck-1", version=V5))
    assert dev.publish("fleet/truck-1/telemetry", b"{}", qos=1).reason_code == 0

    iot.update_certificate(certificateId=cid, newStatus="INACTIVE")
    dev.wait_disconnected(timeout=3)
    d = iot.describe_certificate(certificateId=cid)["certificateDescription"]
    assert d["status"] == "INACTIVE" and d["lastModifiedDate"] >= d["creationDate"]
    refused = shoal.track(Client(shoal, tls=True, client_cert=(crt, key), client_id="truck-1", version=V5,
                                 expect_success=False))
    assert refused.connack is not None and refused.connack.reason_code == 0x87, refused.connack

    with pytest.raises(iot.exceptions.DeleteConflictException):
        iot.delete_certificate(certificateId=cid)
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.delete_thing(thingName="truck-1")   # principals still attached
    with pytest.raises(iot.exceptions.DeleteConflictException):
        iot.delete_policy(policyName="truck")   # still attached
    iot.detach_thing_principal(thingName="truck-1", principal=arn)
    iot.detach_policy(policyName="truck", target=arn)
    assert iot.list_thing_principals(thingName="truck-1")["principals"] == []
    assert iot.list_principal_things(principal=arn)["things"] == []
    assert iot.list_attached_policies(target=arn)["policies"] == []
    assert iot.list_targets_for_policy(policyName="truck")["targets"] == []

    iot.delete_certificate(certificateId=cid)
    with pytest.raises(iot.exceptions.ResourceNotFoundException) as e:
        iot.describe_certificate(certificateId=cid)
    assert status(e) == 404
    iot.delete_policy(policyName="truck")
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.get_policy(policyName="truck")
    iot.delete_thing(thingName="truck-1")
    assert iot.list_certificates()["certificates"] == []


# -- certificates ----------------------------------------------------------------------------------

def test_csr_and_certificate_states(shoal: Shoal):
    iot = shoal.boto3("iot")
    d = workdir(shoal)
    _, csr = openssl_key_csr(d, "csr-dev")
    c = iot.create_certificate_from_csr(certificateSigningRequest=csr.read_text(), setAsActive=True)
    assert set(c) - {"ResponseMetadata"} == {"certificateArn", "certificateId", "certificatePem"}
    assert iot.describe_certificate(certificateId=c["certificateId"])["certificateDescription"]["status"] == "ACTIVE"
    # setAsActive defaults to false, as on AWS.
    _, csr2 = openssl_key_csr(d, "csr-dev-2")
    c2 = iot.create_certificate_from_csr(certificateSigningRequest=csr2.read_text())
    assert iot.describe_certificate(certificateId=c2["certificateId"])["certificateDescription"]["status"] == "INACTIVE"
    assert iot.describe_certificate(
        certificateId=iot.create_keys_and_certificate()["certificateId"])["certificateDescription"]["status"] == \
        "INACTIVE"
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_certificate_from_csr(certificateSigningRequest="not a CSR")

    cid = c["certificateId"]
    with pytest.raises(iot.exceptions.CertificateStateException) as e:
        iot.delete_certificate(certificateId=cid)        # ACTIVE
    assert status(e) == 406
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.update_certificate(certificateId=cid, newStatus="PENDING_ACTIVATION")   # AWS-internal state
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.update_certificate(certificateId="0" * 64, newStatus="INACTIVE")
    iot.update_certificate(certificateId=cid, newStatus="REVOKED")
    with pytest.raises(iot.exceptions.CertificateStateException):
        iot.update_certificate(certificateId=cid, newStatus="ACTIVE")
    assert iot.describe_certificate(certificateId=cid)["certificateDescription"]["status"] == "REVOKED"

    # forceDelete detaches policies, but not things.
    iot.create_policy(policyName="p", policyDocument=ALLOW_ALL)
    iot.attach_policy(policyName="p", target=c2["certificateArn"])
    with pytest.raises(iot.exceptions.DeleteConflictException):
        iot.delete_certificate(certificateId=c2["certificateId"])
    iot.create_thing(thingName="holder")
    iot.attach_thing_principal(thingName="holder", principal=c2["certificateArn"])
    with pytest.raises(iot.exceptions.DeleteConflictException):
        iot.delete_certificate(certificateId=c2["certificateId"], forceDelete=True)
    assert iot.list_attached_policies(target=c2["certificateArn"])["policies"] != []
    iot.detach_thing_principal(thingName="holder", principal=c2["certificateArn"])
    iot.delete_certificate(certificateId=c2["certificateId"], forceDelete=True)
    assert iot.list_targets_for_policy(policyName="p")["targets"] == []
    iot.delete_certificate(certificateId=cid)   # REVOKED, nothing attached
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.delete_certificate(certificateId=cid)


def test_list_certificates_pages_by_creation(shoal: Shoal):
    iot = shoal.boto3("iot")
    ids = [iot.create_keys_and_certificate(setAsActive=True)["certificateId"] for _ in range(5)]
    newest_first = [c["certificateId"] for c in iot.list_certificates()["certificates"]]
    # Creation order (ties broken by id): newest first by default, oldest first on request.
    assert sorted(newest_first) == sorted(ids) and len(newest_first) == 5
    oldest_first = [c["certificateId"] for c in iot.list_certificates(ascendingOrder=True)["certificates"]]
    assert oldest_first == newest_first[::-1]
    pages = list(iot.get_paginator("list_certificates").paginate(
        ascendingOrder=True, PaginationConfig={"PageSize": 2}))
    assert [len(p["certificates"]) for p in pages] == [2, 2, 1]
    assert [c["certificateId"] for p in pages for c in p["certificates"]] == oldest_first
    first = iot.list_certificates(pageSize=2)
    assert "nextMarker" in first and [c["certificateId"] for c in first["certificates"]] == newest_first[:2]
    item = first["certificates"][0]
    assert item["status"] == "ACTIVE" and item["certificateArn"].endswith(item["certificateId"])
    assert_recent(item["creationDate"])
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.list_certificates(pageSize=251)


def test_bring_your_own_ca(shoal: Shoal):
    """GetRegistrationCode, RegisterCACertificate with a verification certificate, Describe/List/
    UpdateCACertificate, RegisterCertificate of a device it signed, ListCertificatesByCA."""
    iot = shoal.boto3("iot")
    d = workdir(shoal)
    ca = openssl_ca(d, "fleet")
    other = openssl_ca(d, "other")
    code_ = iot.get_registration_code()["registrationCode"]
    assert len(code_) == 64 and iot.get_registration_code()["registrationCode"] == code_

    _, vcsr = openssl_key_csr(d, code_)
    good = openssl_sign(d, ca, vcsr, code_).read_text()
    _, wcsr = openssl_key_csr(d, "wrong-code")
    wrong_cn = openssl_sign(d, ca, wcsr, "wrong-code").read_text()
    other_signed = openssl_sign(d, other, vcsr, code_ + "-other").read_text()
    with pytest.raises(iot.exceptions.RegistrationCodeValidationException):
        iot.register_ca_certificate(caCertificate=ca.pem, verificationCertificate=wrong_cn)
    with pytest.raises(iot.exceptions.CertificateValidationException):
        iot.register_ca_certificate(caCertificate=ca.pem, verificationCertificate=other_signed)
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.register_ca_certificate(caCertificate=ca.pem, registrationConfig={"templateBody": "{}"})

    r = iot.register_ca_certificate(caCertificate=ca.pem, verificationCertificate=good, setAsActive=True)
    ca_id = r["certificateId"]
    assert r["certificateArn"] == f"{ARN}:cacert/{ca_id}"
    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException) as e:
        iot.register_ca_certificate(caCertificate=ca.pem)
    assert e.value.response.get("resourceId") == ca_id, e.value.response
    desc = iot.describe_ca_certificate(certificateId=ca_id)["certificateDescription"]
    assert (desc["status"], desc["autoRegistrationStatus"], desc["certificatePem"].strip()) == \
        ("ACTIVE", "DISABLE", ca.pem.strip())
    assert_recent(desc["creationDate"])
    assert desc["validity"]["notBefore"] < desc["validity"]["notAfter"]
    listed = iot.list_ca_certificates()["certificates"]
    assert [(x["certificateId"], x["status"]) for x in listed] == [(ca_id, "ACTIVE")]

    # A device certificate the CA signed: registered INACTIVE unless asked otherwise.
    _, dcsr = openssl_key_csr(d, "byo-dev")
    dev_pem = openssl_sign(d, ca, dcsr, "byo-dev").read_text()
    reg = iot.register_certificate(certificatePem=dev_pem, caCertificatePem=ca.pem)
    dev_desc = iot.describe_certificate(certificateId=reg["certificateId"])["certificateDescription"]
    assert (dev_desc["status"], dev_desc["caCertificateId"]) == ("INACTIVE", ca_id)
    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException) as e:
        iot.register_certificate(certificatePem=dev_pem, status="ACTIVE")
    assert e.value.response.get("resourceId") == reg["certificateId"]
    _, dcsr2 = openssl_key_csr(d, "byo-dev-2")
    reg2 = iot.register_certificate(certificatePem=openssl_sign(d, ca, dcsr2, "byo-dev-2").read_text(),
                                    status="ACTIVE")
    assert iot.describe_certificate(certificateId=reg2["certificateId"])["certificateDescription"]["status"] == \
        "ACTIVE"
    by_ca = iot.list_certificates_by_ca(caCertificateId=ca_id, ascendingOrder=True)["certificates"]
    assert [x["certificateId"] for x in by_ca] == [reg["certificateId"], reg2["certificateId"]]
    # Shoal's own root lists what it issued.
    own = iot.create_keys_and_certificate()["certificateId"]
    root = Api(shoal).ok("GET", "/api/v1/ca")["certificateId"]
    assert [x["certificateId"] for x in iot.list_certificates_by_ca(caCertificateId=root)["certificates"]] == [own]
    # Signed by a CA nobody registered.
    _, ocsr = openssl_key_csr(d, "stranger")
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.register_certificate(certificatePem=openssl_sign(d, other, ocsr, "stranger").read_text())
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.register_certificate_without_ca(certificatePem=dev_pem)

    iot.update_ca_certificate(certificateId=ca_id, newStatus="INACTIVE", newAutoRegistrationStatus="ENABLE")
    desc = iot.describe_ca_certificate(certificateId=ca_id)["certificateDescription"]
    assert (desc["status"], desc["autoRegistrationStatus"]) == ("INACTIVE", "ENABLE")
    iot.update_ca_certificate(certificateId=ca_id, removeAutoRegistration=True)
    assert iot.describe_ca_certificate(certificateId=ca_id)["certificateDescription"]["autoRegistrationStatus"] == \
        "DISABLE"
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.update_ca_certificate(certificateId="0" * 64, newStatus="ACTIVE")
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_ca_certificate(certificateId="0" * 64)
    # Shoal cannot delete a CA (see README): the answer says what to do instead.
    with pytest.raises(iot.exceptions.InvalidRequestException) as e:
        iot.delete_ca_certificate(certificateId=ca_id)
    assert "UpdateCACertificate" in e.value.response["Error"]["Message"]
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.delete_ca_certificate(certificateId="0" * 64)


# -- policies --------------------------------------------------------------------------------------

def test_policy_versions(shoal: Shoal):
    iot = shoal.boto3("iot")
    iot.create_policy(policyName="fleet", policyDocument=policy_doc("v1/#"))
    g = iot.get_policy(policyName="fleet")
    assert (g["policyName"], g["policyArn"], g["defaultVersionId"]) == ("fleet", f"{ARN}:policy/fleet", "1")
    assert json.loads(g["policyDocument"]) == json.loads(policy_doc("v1/#"))
    assert_recent(g["creationDate"])
    assert_recent(g["lastModifiedDate"])

    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException) as e:
        iot.create_policy(policyName="fleet", policyDocument=ALLOW_ALL)
    assert (e.value.response.get("resourceId"), e.value.response.get("resourceArn")) == \
        ("fleet", f"{ARN}:policy/fleet")
    with pytest.raises(iot.exceptions.MalformedPolicyException) as e:
        iot.create_policy(policyName="bad", policyDocument='{"Version": "2012-10-17", "Statement": [{"Effect": "Maybe"}]}')
    assert status(e) == 400
    with pytest.raises(iot.exceptions.MalformedPolicyException):
        iot.create_policy(policyName="bad", policyDocument="not json")
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_policy(policyName="no spaces", policyDocument=ALLOW_ALL)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.create_policy_version(policyName="ghost", policyDocument=ALLOW_ALL)
    with pytest.raises(iot.exceptions.MalformedPolicyException):
        iot.create_policy_version(policyName="fleet", policyDocument="{}")

    v2 = iot.create_policy_version(policyName="fleet", policyDocument=policy_doc("v2/#"))
    assert (v2["policyArn"], v2["policyVersionId"], v2["isDefaultVersion"]) == (f"{ARN}:policy/fleet", "2", False)
    assert json.loads(v2["policyDocument"]) == json.loads(policy_doc("v2/#"))
    v3 = iot.create_policy_version(policyName="fleet", policyDocument=policy_doc("v3/#"), setAsDefault=True)
    assert (v3["policyVersionId"], v3["isDefaultVersion"]) == ("3", True)
    assert iot.get_policy(policyName="fleet")["defaultVersionId"] == "3"
    for n in (4, 5):
        iot.create_policy_version(policyName="fleet", policyDocument=policy_doc(f"v{n}/#"))
    with pytest.raises(iot.exceptions.VersionsLimitExceededException) as e:
        iot.create_policy_version(policyName="fleet", policyDocument=policy_doc("v6/#"))
    assert status(e) == 409

    versions = iot.list_policy_versions(policyName="fleet")["policyVersions"]
    assert [(v["versionId"], v["isDefaultVersion"]) for v in versions] == \
        [("5", False), ("4", False), ("3", True), ("2", False), ("1", False)]
    assert_recent(versions[0]["createDate"])
    gv = iot.get_policy_version(policyName="fleet", policyVersionId="4")
    assert (gv["policyName"], gv["policyVersionId"], gv["isDefaultVersion"]) == ("fleet", "4", False)
    assert json.loads(gv["policyDocument"]) == json.loads(policy_doc("v4/#"))
    assert_recent(gv["creationDate"])
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.get_policy_version(policyName="fleet", policyVersionId="9")

    iot.set_default_policy_version(policyName="fleet", policyVersionId="4")
    assert iot.get_policy(policyName="fleet")["defaultVersionId"] == "4"
    assert json.loads(iot.get_policy(policyName="fleet")["policyDocument"]) == json.loads(policy_doc("v4/#"))
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.set_default_policy_version(policyName="fleet", policyVersionId="9")
    with pytest.raises(iot.exceptions.DeleteConflictException):
        iot.delete_policy_version(policyName="fleet", policyVersionId="4")
    iot.delete_policy_version(policyName="fleet", policyVersionId="2")
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.get_policy_version(policyName="fleet", policyVersionId="2")
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.delete_policy_version(policyName="fleet", policyVersionId="2")
    # Room for one more; its id continues the sequence.
    assert iot.create_policy_version(policyName="fleet", policyDocument=ALLOW_ALL)["policyVersionId"] == "6"
    iot.delete_policy(policyName="fleet")
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.delete_policy(policyName="fleet")


def test_list_policies_pages(shoal: Shoal):
    iot = shoal.boto3("iot")
    names = [f"p-{i}" for i in range(5)]
    for n in names:
        iot.create_policy(policyName=n, policyDocument=ALLOW_ALL)
    pages = list(iot.get_paginator("list_policies").paginate(
        ascendingOrder=True, PaginationConfig={"PageSize": 2}))
    assert [len(p["policies"]) for p in pages] == [2, 2, 1]
    listed = [x["policyName"] for p in pages for x in p["policies"]]
    assert listed == names   # created in this order
    assert [x["policyName"] for x in iot.list_policies()["policies"]] == names[::-1]
    assert iot.list_policies()["policies"][0] == {"policyName": "p-4", "policyArn": f"{ARN}:policy/p-4"}


# -- attachments -----------------------------------------------------------------------------------

def test_attachments_and_their_errors(shoal: Shoal):
    iot = shoal.boto3("iot")
    c = iot.create_keys_and_certificate(setAsActive=True)
    arn, cid = c["certificateArn"], c["certificateId"]
    iot.create_policy(policyName="a", policyDocument=ALLOW_ALL)
    iot.create_policy(policyName="b", policyDocument=ALLOW_ALL)

    # By id or by ARN; the deprecated principal-policy operations take a header.
    iot.attach_policy(policyName="a", target=cid)
    iot.attach_principal_policy(policyName="b", principal=arn)
    assert [p["policyName"] for p in iot.list_attached_policies(target=arn)["policies"]] == ["a", "b"]
    assert [p["policyName"] for p in iot.list_principal_policies(principal=cid)["policies"]] == ["a", "b"]
    assert iot.list_policy_principals(policyName="b")["principals"] == [arn]
    pages = list(iot.get_paginator("list_attached_policies").paginate(
        target=arn, PaginationConfig={"PageSize": 1}))
    assert [[p["policyName"] for p in page["policies"]] for page in pages] == [["a"], ["b"]]
    iot.detach_principal_policy(policyName="b", principal=arn)
    assert [p["policyName"] for p in iot.list_attached_policies(target=arn)["policies"]] == ["a"]

    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.attach_policy(policyName="ghost", target=arn)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.attach_policy(policyName="a", target=f"{ARN}:cert/{'0' * 64}")
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.attach_policy(policyName="a", target="not-a-principal")
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.list_targets_for_policy(policyName="ghost")
    # AWS allows 10 policies per target.
    for i in range(9):
        iot.create_policy(policyName=f"extra-{i}", policyDocument=ALLOW_ALL)
        iot.attach_policy(policyName=f"extra-{i}", target=arn)
    with pytest.raises(iot.exceptions.LimitExceededException):
        iot.attach_policy(policyName="b", target=arn)

    # Things: the thing must exist; principals page by nextToken.
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.attach_thing_principal(thingName="ghost", principal=arn)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.list_thing_principals(thingName="ghost")
    iot.create_thing(thingName="t1")
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.attach_thing_principal(thingName="t1", principal=arn, thingPrincipalType="EXCLUSIVE_THING")
    c2 = iot.create_keys_and_certificate(setAsActive=True)
    iot.attach_thing_principal(thingName="t1", principal=arn)
    iot.attach_thing_principal(thingName="t1", principal=c2["certificateId"])
    expected = sorted([arn, c2["certificateArn"]])
    pages = list(iot.get_paginator("list_thing_principals").paginate(
        thingName="t1", PaginationConfig={"PageSize": 1}))
    assert [p["principals"] for p in pages] == [[expected[0]], [expected[1]]]
    v2 = iot.list_thing_principals_v2(thingName="t1")["thingPrincipalObjects"]
    assert v2 == [{"principal": p, "thingPrincipalType": "NON_EXCLUSIVE_THING"} for p in expected]
    iot.create_thing(thingName="t2")
    iot.attach_thing_principal(thingName="t2", principal=arn)
    assert iot.list_principal_things(principal=arn)["things"] == ["t1", "t2"]
    assert iot.list_principal_things(principal=arn, maxResults=1)["nextToken"] == "t1"
    assert iot.list_principal_things_v2(principal=arn)["principalThingObjects"] == \
        [{"thingName": t, "thingPrincipalType": "NON_EXCLUSIVE_THING"} for t in ("t1", "t2")]
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.list_principal_things(principal=f"{ARN}:cert/{'0' * 64}")


def test_an_access_key_is_a_policy_target(shoal: Shoal):
    """AttachPolicy with an access key id (`AKIA...`) as the target governs what the key may do
    on the data plane."""
    iot = shoal.boto3("iot")
    key = Api(shoal).ok("POST", "/api/v1/keys", {"description": "truck t1"})
    kid = key["accessKeyId"]
    dev = boto3.client("iot-data", endpoint_url=f"http://{shoal.host}:{shoal.http_port}", region_name="us-east-1",
                       aws_access_key_id=kid, aws_secret_access_key=key["secretAccessKey"])
    with pytest.raises(ClientError) as e:
        dev.publish(topic="fleet/t1/telemetry", payload=b"{}")
    assert code(e) == "ForbiddenException"
    iot.create_policy(policyName="t1-http", policyDocument=policy_doc("fleet/t1/*"))
    iot.attach_policy(policyName="t1-http", target=kid)
    dev.publish(topic="fleet/t1/telemetry", payload=b"{}")
    assert [p["policyName"] for p in iot.list_attached_policies(target=kid)["policies"]] == ["t1-http"]
    [target] = iot.list_targets_for_policy(policyName="t1-http")["targets"]
    assert target.endswith(kid)
    iot.detach_policy(policyName="t1-http", target=kid)
    with pytest.raises(ClientError) as e:
        dev.publish(topic="fleet/t1/telemetry", payload=b"{}")
    assert code(e) == "ForbiddenException"


def test_aws_cli_creates_and_lists_policies(shoal: Shoal, tmp_path: Path):
    aws = shutil.which("aws")
    if aws is None:
        pytest.skip("the AWS CLI (awscli) is not installed")
    env = dict(os.environ, AWS_SHARED_CREDENTIALS_FILE=str(shoal.data_dir / "credentials"),
               AWS_CONFIG_FILE="/dev/null", AWS_DEFAULT_REGION="us-east-1")
    env.pop("AWS_ACCESS_KEY_ID", None)
    env.pop("AWS_SECRET_ACCESS_KEY", None)
    ep = ["--endpoint-url", f"http://{shoal.host}:{shoal.http_port}"]
    doc_file = tmp_path / "policy.json"
    doc_file.write_text(ALLOW_ALL)

    def aws_iot(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([aws, *ep, "iot", *args], env=env, capture_output=True, text=True, timeout=60)

    p = aws_iot("create-policy", "--policy-name", "cli-policy", "--policy-document", f"file://{doc_file}")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert (out["policyName"], out["policyVersionId"]) == ("cli-policy", "1")
    p = aws_iot("list-policies")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["policies"] == [{"policyName": "cli-policy", "policyArn": f"{ARN}:policy/cli-policy"}]
    p = aws_iot("create-policy", "--policy-name", "cli-policy", "--policy-document", f"file://{doc_file}")
    assert p.returncode != 0 and "ResourceAlreadyExistsException" in p.stderr, p.stderr
    p = aws_iot("create-keys-and-certificate", "--set-as-active")
    assert p.returncode == 0, p.stderr
    cert = json.loads(p.stdout)
    p = aws_iot("attach-policy", "--policy-name", "cli-policy", "--target", cert["certificateArn"])
    assert p.returncode == 0, p.stderr
    p = aws_iot("list-targets-for-policy", "--policy-name", "cli-policy")
    assert p.returncode == 0 and json.loads(p.stdout)["targets"] == [cert["certificateArn"]], p.stderr
