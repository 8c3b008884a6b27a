//! Signatures made by botocore 1.x (`SigV4Auth` / `SigV4QueryAuth` with the clock fixed at
//! 2015-08-30T12:36:00Z and AWS's documented example key) must verify; any change to what they
//! cover must not.

use super::*;

const KEY_ID: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const NOW: i64 = 1_440_938_160; // 20150830T123600Z

fn req<'a>(method: &'a str, path: &'a str, query: &'a str, headers: &[(&'a str, &'a str)]) -> Request<'a> {
    Request {
        method,
        path,
        query,
        headers: headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect(),
    }
}

fn check(r: &Request<'_>, body: &[u8], secret: &str, now: i64) -> Result<(), SigV4Error> {
    let a = Authorization::parse(r)?;
    a.check_time(now)?;
    a.verify(r, &sha256_hex(body), secret)
}

const PUBLISH_AUTH: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iotdata/aws4_request, \
     SignedHeaders=host;x-amz-date, Signature=008cdf75b688008b3cd3ef5cec2059925718bd4c057f729c5fca85a4898e55a7";

fn publish<'a>(path: &'a str, query: &'a str, auth: &'a str, date: &'a str) -> Request<'a> {
    req(
        "POST",
        path,
        query,
        &[
            ("Host", "localhost:8080"),
            ("X-Amz-Date", date),
            ("Authorization", auth),
        ],
    )
}

#[test]
fn aws_test_suite_get_vanilla() {
    // From AWS's SigV4 test suite (service "service", which Shoal does not accept as a
    // signing name, so the pieces are checked directly).
    let cred = Credential {
        key_id: KEY_ID.into(),
        date: "20150830".into(),
        region: "us-east-1".into(),
        service: "service".into(),
    };
    let r = req(
        "GET",
        "/",
        "",
        &[
            ("Host", "example.amazonaws.com"),
            ("X-Amz-Date", "20150830T123600Z"),
        ],
    );
    let signed = vec!["host".to_owned(), "x-amz-date".to_owned()];
    let headers = canonical_headers(&r, &signed, None).unwrap();
    let canonical = canonical_request("GET", "/", "", &headers, &signed, EMPTY_SHA256);
    let sts = string_to_sign("20150830T123600Z", &cred, &canonical);
    let sig = hmac::sign(&signing_key(SECRET, &cred), sts.as_bytes());
    assert_eq!(
        hex(sig.as_ref()),
        "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
    );
}

#[test]
fn botocore_control_plane_get() {
    let r = req(
        "GET",
        "/",
        "",
        &[
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
            (
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iot/aws4_request, \
                 SignedHeaders=host;x-amz-date, \
                 Signature=c2ab889e8a6295b9d0c9064dc9c60c232666abfb31f2f7633298bfe056b6c10e",
            ),
        ],
    );
    check(&r, b"", SECRET, NOW).unwrap();
}

#[test]
fn botocore_publish_double_encodes_the_path() {
    let path = "/topics/a%2Fb%2F%24aws%20c";
    let r = publish(path, "qos=1&retain=true", PUBLISH_AUTH, "20150830T123600Z");
    check(&r, b"hello", SECRET, NOW).unwrap();
    // The query in another order is the same canonical query.
    let r = publish(path, "retain=true&qos=1", PUBLISH_AUTH, "20150830T123600Z");
    check(&r, b"hello", SECRET, NOW).unwrap();
}

#[test]
fn anything_signed_changed_is_refused() {
    let path = "/topics/a%2Fb%2F%24aws%20c";
    let date = "20150830T123600Z";
    let mismatch = |r: &Request<'_>, body: &[u8], secret: &str| {
        let e = check(r, body, secret, NOW).unwrap_err();
        assert!(matches!(e, SigV4Error::Mismatch { .. }), "{e:?}");
        assert_eq!(e.aws_type(), "InvalidSignatureException");
    };
    // Another body, path, query, method, secret.
    mismatch(
        &publish(path, "qos=1&retain=true", PUBLISH_AUTH, date),
        b"hellO",
        SECRET,
    );
    mismatch(
        &publish(
            "/topics/a%2Fb%2F%24aws%20d",
            "qos=1&retain=true",
            PUBLISH_AUTH,
            date,
        ),
        b"hello",
        SECRET,
    );
    mismatch(
        &publish(path, "qos=0&retain=true", PUBLISH_AUTH, date),
        b"hello",
        SECRET,
    );
    mismatch(
        &publish(path, "qos=1&retain=true&x=1", PUBLISH_AUTH, date),
        b"hello",
        SECRET,
    );
    let mut r = publish(path, "qos=1&retain=true", PUBLISH_AUTH, date);
    r.method = "PUT";
    mismatch(&r, b"hello", SECRET);
    mismatch(
        &publish(path, "qos=1&retain=true", PUBLISH_AUTH, date),
        b"hello",
        "another secret",
    );
    // The decoded path (a/b/$aws c as one topic written differently) is another request.
    mismatch(
        &publish("/topics/a/b/%24aws%20c", "qos=1&retain=true", PUBLISH_AUTH, date),
        b"hello",
        SECRET,
    );
    // Another host.
    let r = req(
        "POST",
        path,
        "qos=1&retain=true",
        &[
            ("Host", "evil:8080"),
            ("X-Amz-Date", date),
            ("Authorization", PUBLISH_AUTH),
        ],
    );
    mismatch(&r, b"hello", SECRET);
}

#[test]
fn dates_outside_the_window_are_refused() {
    let path = "/topics/a%2Fb%2F%24aws%20c";
    let r = publish(path, "qos=1&retain=true", PUBLISH_AUTH, "20150830T123600Z");
    check(&r, b"hello", SECRET, NOW + 14 * 60).unwrap();
    check(&r, b"hello", SECRET, NOW - 14 * 60).unwrap();
    for now in [NOW + 16 * 60, NOW - 16 * 60, NOW + 86_400 * 365] {
        let e = check(&r, b"hello", SECRET, now).unwrap_err();
        assert!(matches!(e, SigV4Error::Expired(_)), "{e:?}");
        assert!(e.to_string().contains("Signature expired"), "{e}");
    }
    // A date the scope does not agree with.
    let r = publish(path, "qos=1&retain=true", PUBLISH_AUTH, "20150831T123600Z");
    assert!(matches!(
        check(&r, b"hello", SECRET, NOW + 86_400).unwrap_err(),
        SigV4Error::Invalid(_)
    ));
    let r = publish(path, "qos=1&retain=true", PUBLISH_AUTH, "2015-08-30T12:36:00Z");
    assert!(matches!(
        check(&r, b"hello", SECRET, NOW).unwrap_err(),
        SigV4Error::Incomplete(_)
    ));
}

#[test]
fn malformed_authorizations_say_what_is_wrong() {
    let date = "20150830T123600Z";
    let cases = [
        (
            "AWS4-HMAC-SHA256 SignedHeaders=host;x-amz-date, Signature=00",
            "'Credential'",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iotdata/aws4_request, Signature=00",
            "'SignedHeaders'",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iotdata/aws4_request, SignedHeaders=host",
            "'Signature'",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/s3/aws4_request, SignedHeaders=host, \
             Signature=008cdf75b688008b3cd3ef5cec2059925718bd4c057f729c5fca85a4898e55a7",
            "correct service",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iotdata/aws5_request, SignedHeaders=host, \
             Signature=008cdf75b688008b3cd3ef5cec2059925718bd4c057f729c5fca85a4898e55a7",
            "terminator",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iotdata/aws4_request, SignedHeaders=host, \
             Signature=zz8cdf75b688008b3cd3ef5cec2059925718bd4c057f729c5fca85a4898e55a7",
            "hexadecimal",
        ),
        ("AWS4-HMAC-SHA1 Credential=x", "AWS4-HMAC-SHA256"),
    ];
    for (auth, needle) in cases {
        let r = publish("/topics/x", "", auth, date);
        let e = check(&r, b"", SECRET, NOW).unwrap_err();
        assert_eq!(e.aws_type(), "IncompleteSignatureException", "{auth}");
        assert!(e.to_string().contains(needle), "{auth}: {e}");
    }
    // No signature at all.
    let r = req("GET", "/things/t/shadow", "", &[("Host", "h")]);
    assert_eq!(check(&r, b"", SECRET, NOW).unwrap_err(), SigV4Error::Missing);
}

#[test]
fn host_must_be_signed_and_signed_headers_present() {
    let mut r = req("POST", "/topics/x", "", &[("Host", "localhost:8080")]);
    let h = sign(&r, b"", &signing(), NOW);
    let auth_host_dropped = h[2].1.replace("SignedHeaders=host;", "SignedHeaders=");
    r.headers.push(("x-amz-date", h[0].1.as_bytes()));
    r.headers.push(("x-amz-content-sha256", h[1].1.as_bytes()));
    r.headers.push(("authorization", auth_host_dropped.as_bytes()));
    let e = check(&r, b"", SECRET, NOW).unwrap_err();
    assert!(e.to_string().contains("'Host'"), "{e}");
    // A signed header the request no longer carries.
    let mut r3 = req(
        "POST",
        "/topics/x",
        "",
        &[("Host", "localhost:8080"), ("x-custom", "1")],
    );
    let h = sign(&r3, b"", &signing(), NOW);
    r3.headers.retain(|(n, _)| *n != "x-custom");
    for (n, v) in &h {
        r3.headers.push((n, v.as_bytes()));
    }
    let e = check(&r3, b"", SECRET, NOW).unwrap_err();
    assert!(e.to_string().contains("'x-custom'"), "{e}");
}

fn signing() -> SigningKey<'static> {
    SigningKey {
        key_id: KEY_ID,
        secret: SECRET,
        region: "eu-west-1",
        service: "iotdata",
    }
}

#[test]
fn what_sign_produces_verifies() {
    let base = req(
        "POST",
        "/things/t%201/shadow",
        "name=s%2B1&b=",
        &[("Host", "127.0.0.1:8080"), ("Content-Type", "application/json")],
    );
    let body = br#"{"state":{"desired":{"a":1}}}"#;
    let added = sign(&base, body, &signing(), NOW);
    let mut r = base.clone();
    for (n, v) in &added {
        r.headers.push((n, v.as_bytes()));
    }
    check(&r, body, SECRET, NOW).unwrap();
    // x-amz-content-sha256 must be the body's hash.
    let e = check(&r, b"{}", SECRET, NOW).unwrap_err();
    assert!(e.to_string().contains("x-amz-content-sha256"), "{e}");
}

#[test]
fn botocore_presigned_websocket_url() {
    let q = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2F\
             iotdevicegateway%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-Expires=300&\
             X-Amz-SignedHeaders=host&X-Amz-Signature=\
             82bc46b590c10ee9ea4809ac77eb3ee89228dd9b4c33926bb129feddddd5c195";
    let r = req(
        "GET",
        "/mqtt",
        q,
        &[("Host", "localhost:8080"), ("Upgrade", "websocket")],
    );
    let a = Authorization::parse(&r).unwrap();
    assert_eq!(a.placement, Placement::Query { expires: Some(300) });
    check(&r, b"", SECRET, NOW + 299).unwrap();
    let e = check(&r, b"", SECRET, NOW + 301).unwrap_err();
    assert!(matches!(e, SigV4Error::Expired(_)), "{e:?}");
    // A session token appended after signing does not break it.
    let with_token = format!("{q}&X-Amz-Security-Token=abc%2Fdef");
    let r = req("GET", "/mqtt", &with_token, &[("Host", "localhost:8080")]);
    check(&r, b"", SECRET, NOW).unwrap();
    // Another path does.
    let r = req("GET", "/mqtt2", q, &[("Host", "localhost:8080")]);
    assert!(matches!(
        check(&r, b"", SECRET, NOW).unwrap_err(),
        SigV4Error::Mismatch { .. }
    ));
}

#[test]
fn presigned_without_expires_uses_the_clock_window() {
    // The shape the AWS IoT Device SDK v2 sends: no X-Amz-Expires, host without port.
    let mut q = presign("/mqtt", "", "localhost", &signing(), NOW, 60);
    // Rebuild the same URL without X-Amz-Expires, re-signed: sign by hand through presign's
    // pieces is not exposed, so check the window logic on a parsed authorization instead.
    q = q.replace("&X-Amz-Expires=60", "");
    let r = req("GET", "/mqtt", &q, &[("Host", "localhost:8443")]);
    let a = Authorization::parse(&r).unwrap();
    assert_eq!(a.placement, Placement::Query { expires: None });
    a.check_time(NOW + 14 * 60).unwrap();
    assert!(matches!(a.check_time(NOW + 16 * 60), Err(SigV4Error::Expired(_))));
    // Dropping X-Amz-Expires changed the signed query: the signature no longer matches.
    assert!(matches!(
        a.verify(&r, EMPTY_SHA256, SECRET),
        Err(SigV4Error::Mismatch { .. })
    ));
}

#[test]
fn presign_round_trip_and_host_without_port() {
    let q = presign("/mqtt", "", "localhost", &signing(), NOW, 60);
    // The v1 device SDK signs the host without its port; the request carries it.
    let r = req("GET", "/mqtt", &q, &[("Host", "localhost:8443")]);
    check(&r, b"", SECRET, NOW).unwrap();
    let r = req("GET", "/mqtt", &q, &[("Host", "otherhost:8443")]);
    assert!(check(&r, b"", SECRET, NOW).is_err());
}

#[test]
fn the_key_cache_gives_the_same_answers() {
    let path = "/topics/a%2Fb%2F%24aws%20c";
    let r = publish(path, "qos=1&retain=true", PUBLISH_AUTH, "20150830T123600Z");
    let a = Authorization::parse(&r).unwrap();
    let cache = KeyCache::default();
    let body = sha256_hex(b"hello");
    a.verify_cached(&r, &body, SECRET, &cache).unwrap();
    a.verify_cached(&r, &body, SECRET, &cache).unwrap();
    // A cached key is never used for another secret.
    assert!(a.verify_cached(&r, &body, "another", &cache).is_err());
    a.verify_cached(&r, &body, SECRET, &cache).unwrap();
}

#[test]
fn canonical_uri_rules() {
    assert_eq!(canonical_uri(""), "/");
    assert_eq!(canonical_uri("/"), "/");
    assert_eq!(canonical_uri("/a/./b/../c//d/"), "/a/c/d/");
    assert_eq!(canonical_uri("/topics/a%2Fb"), "/topics/a%252Fb");
    assert_eq!(canonical_uri("/x y"), "/x%20y");
    assert_eq!(canonical_query("b=2&a=%41&c", &[]), "a=A&b=2&c=");
    assert_eq!(canonical_query("a=x y+z", &[]), "a=x%20y%2Bz");
}

#[test]
fn amz_dates() {
    assert_eq!(parse_amz_date("20150830T123600Z"), Some(NOW));
    assert_eq!(format_amz_date(NOW), "20150830T123600Z");
    assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
    assert_eq!(format_amz_date(951_782_400), "20000229T000000Z");
    for bad in [
        "20151330T123600Z",
        "2015083T1236000Z",
        "20150830T123600",
        "20150830T2A3600Z",
    ] {
        assert_eq!(parse_amz_date(bad), None, "{bad}");
    }
}

#[test]
fn credentials_files_are_read_by_profile() {
    let text = "# shoal\naws_access_key_id = AKIAFIRST\naws_secret_access_key = s1\n\n[ops]\n\
                ; comment\naws_access_key_id=AKIAOPS\naws_secret_access_key= s2 \n[empty]\naws_access_key_id =\n";
    assert_eq!(
        credentials_in(text, "default"),
        Some(("AKIAFIRST".into(), "s1".into()))
    );
    assert_eq!(credentials_in(text, "ops"), Some(("AKIAOPS".into(), "s2".into())));
    assert_eq!(credentials_in(text, "empty"), None);
    assert_eq!(credentials_in(text, "missing"), None);
}
