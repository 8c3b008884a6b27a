//! The [`RegistryStore`] contract as an executable check (see [`run_registry_suite`]).
//!
//! The suite drives a store through [`Registry`], the AWS operations, so it checks the rules
//! (validation, limits, versions, idempotency, types, groups, listing and paging) end to end
//! on the backend as well as the backend's atomicity.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use shoal_things::registry::{
    AttributePayload, CreateThingGroupRequest, CreateThingRequest, CreateThingTypeRequest,
    DeprecateThingTypeRequest, ListThingGroupsFilter, ListThingsFilter, Page, PageRequest, Registry,
    RegistryConfig, RegistryError, RegistryStore, ThingGroupMembershipRequest, ThingGroupProperties,
    ThingTypeProperties, UpdateThingGroupRequest, UpdateThingRequest,
};

/// The configuration the suite runs with: AWS limits, except that a deprecated type can be
/// deleted at once.
pub fn suite_config() -> RegistryConfig {
    let mut config = RegistryConfig::default();
    config.limits.type_delete_delay = Duration::ZERO;
    config
}

/// Runs every registry conformance check against `store`, which must start empty. It needs a
/// multi-threaded tokio runtime (the concurrency check spawns tasks).
///
/// Covers: create / describe / update (merge and replace, empty values delete) / delete with
/// `expectedVersion`; idempotent creates; name and attribute validation; attribute limits with
/// and without a type; thing types (deprecation, what it blocks, deletion rules); thing groups
/// (nesting, depth limit, idempotency, updates, deletion rules); membership (limits, one group
/// per hierarchy, ARNs, listing in both directions, cleanup on deletes); `ListThings` filters;
/// paging of every listing; and concurrent updates of one thing (see
/// [`registry_concurrency`]).
///
/// # Panics
///
/// On the first deviation from the contract, naming the case.
pub async fn run_registry_suite(store: Arc<dyn RegistryStore>) {
    let r = Registry::new(Arc::clone(&store), suite_config());
    things_crud(&r).await;
    attribute_updates(&r).await;
    validation(&r).await;
    attribute_limits(&r).await;
    thing_types(&r).await;
    groups(&r).await;
    membership(&r).await;
    deletes_clean_up_memberships(&r).await;
    list_things_filters(&r).await;
    paging(&r).await;
    let stats = registry_concurrency(&[store], "conf-hot", 8, 10).await;
    tracing::info!(?stats, "registry concurrency");
}

/// Panics with the case and the backend if `res` is an error.
fn ok<T>(r: &Registry, case: &str, res: Result<T, RegistryError>) -> T {
    match res {
        Ok(v) => v,
        Err(e) => panic!("[{}] {case}: unexpected {}: {e}", r.store().kind(), e.code()),
    }
}

/// Panics unless `res` failed with the AWS exception `code`; returns the error.
fn fails<T: std::fmt::Debug>(
    r: &Registry,
    case: &str,
    res: Result<T, RegistryError>,
    code: &str,
) -> RegistryError {
    match res {
        Err(e) if e.code() == code => e,
        other => panic!("[{}] {case}: expected {code}, got {other:?}", r.store().kind()),
    }
}

fn attrs(pairs: &[(&str, &str)]) -> Option<AttributePayload> {
    Some(AttributePayload::replace(pairs.iter().copied()))
}

fn create_req(type_name: Option<&str>, pairs: &[(&str, &str)]) -> CreateThingRequest {
    CreateThingRequest {
        thing_type_name: type_name.map(str::to_owned),
        attribute_payload: attrs(pairs),
    }
}

fn group_req(parent: Option<&str>) -> CreateThingGroupRequest {
    CreateThingGroupRequest {
        parent_group_name: parent.map(str::to_owned),
        thing_group_properties: None,
    }
}

fn member(group: &str, thing: &str) -> ThingGroupMembershipRequest {
    ThingGroupMembershipRequest::new(group, thing)
}

fn names<T>(page: &Page<T>, name: impl Fn(&T) -> String) -> Vec<String> {
    page.items.iter().map(name).collect()
}

async fn things_crud(r: &Registry) {
    let case = "create/describe/update/delete";
    let created = ok(
        r,
        case,
        r.create_thing("crud-1", &create_req(None, &[("color", "red")]))
            .await,
    );
    assert_eq!(created.name.as_str(), "crud-1");
    assert_eq!(created.version, 1, "{case}: first version");
    assert_eq!(created.thing_id.len(), 36, "{case}: thing id is a UUID");
    assert_eq!(created.arn, "arn:aws:iot:us-east-1:000000000000:thing/crud-1");
    assert_eq!(created.type_name, None);
    assert_eq!(created.created_ms, created.updated_ms);
    assert_eq!(ok(r, case, r.describe_thing("crud-1").await), created);

    // Idempotent create: same configuration, same thing (same id, no new version).
    let again = ok(
        r,
        case,
        r.create_thing("crud-1", &create_req(None, &[("color", "red")]))
            .await,
    );
    assert_eq!(
        again, created,
        "{case}: idempotent create returns the existing thing"
    );
    let e = fails(
        r,
        case,
        r.create_thing("crud-1", &create_req(None, &[("color", "blue")]))
            .await,
        "ResourceAlreadyExistsException",
    );
    match e {
        RegistryError::ResourceAlreadyExists {
            resource_id,
            resource_arn,
            ..
        } => assert_eq!(
            (resource_id, resource_arn),
            (created.thing_id.clone(), created.arn.clone())
        ),
        other => panic!("{case}: {other:?}"),
    }
    assert_eq!(ok(r, case, r.describe_thing("crud-1").await), created);

    // Updates bump the version by one, even when nothing else changes.
    let u = ok(
        r,
        case,
        r.update_thing("crud-1", &UpdateThingRequest::default()).await,
    );
    assert_eq!((u.version, &u.attributes), (2, &created.attributes));
    assert_eq!(u.thing_id, created.thing_id);
    let stale = UpdateThingRequest {
        attribute_payload: attrs(&[("color", "green")]),
        expected_version: Some(1),
        ..UpdateThingRequest::default()
    };
    let e = fails(
        r,
        case,
        r.update_thing("crud-1", &stale).await,
        "VersionConflictException",
    );
    assert_eq!(e.http_status(), 409);
    assert_eq!(
        ok(r, case, r.describe_thing("crud-1").await).version,
        2,
        "{case}: conflict wrote"
    );
    let fresh = UpdateThingRequest {
        expected_version: Some(2),
        ..stale
    };
    let u = ok(r, case, r.update_thing("crud-1", &fresh).await);
    assert_eq!(u.version, 3);
    assert_eq!(u.attributes.get("color").map(String::as_str), Some("green"));

    fails(
        r,
        case,
        r.delete_thing("crud-1", Some(2)).await,
        "VersionConflictException",
    );
    assert!(
        r.describe_thing("crud-1").await.is_ok(),
        "{case}: conflicting delete deleted"
    );
    ok(r, case, r.delete_thing("crud-1", Some(3)).await);
    fails(
        r,
        case,
        r.describe_thing("crud-1").await,
        "ResourceNotFoundException",
    );
    // Deleting what does not exist succeeds, with or without a version.
    ok(r, case, r.delete_thing("crud-1", None).await);
    ok(r, case, r.delete_thing("crud-1", Some(7)).await);
    fails(
        r,
        case,
        r.update_thing("crud-1", &UpdateThingRequest::default()).await,
        "ResourceNotFoundException",
    );
    // A deleted name can be created again: a new thing with a new id, version 1.
    let reborn = ok(
        r,
        case,
        r.create_thing("crud-1", &CreateThingRequest::default()).await,
    );
    assert_eq!(reborn.version, 1);
    assert_ne!(reborn.thing_id, created.thing_id);
    ok(r, case, r.delete_thing("crud-1", None).await);
}

async fn attribute_updates(r: &Registry) {
    let case = "attribute updates";
    ok(
        r,
        case,
        r.create_thing("attr-1", &create_req(None, &[("a", "1"), ("b", "2")]))
            .await,
    );
    let merge = |pairs: &[(&str, &str)]| UpdateThingRequest {
        attribute_payload: Some(AttributePayload::merge(pairs.iter().copied())),
        ..UpdateThingRequest::default()
    };
    // Merge: set, change, and an empty value deletes.
    let t = ok(
        r,
        case,
        r.update_thing("attr-1", &merge(&[("b", "20"), ("c", "3")])).await,
    );
    assert_eq!(
        t.attributes,
        [("a", "1"), ("b", "20"), ("c", "3")]
            .map(|(k, v)| (k.into(), v.into()))
            .into()
    );
    let t = ok(
        r,
        case,
        r.update_thing("attr-1", &merge(&[("a", ""), ("zz", "")])).await,
    );
    assert_eq!(
        t.attributes,
        [("b", "20"), ("c", "3")]
            .map(|(k, v)| (k.into(), v.into()))
            .into()
    );
    // Replace: exactly the given attributes (empty values dropped).
    let replace = UpdateThingRequest {
        attribute_payload: attrs(&[("x", "9"), ("y", "")]),
        ..UpdateThingRequest::default()
    };
    let t = ok(r, case, r.update_thing("attr-1", &replace).await);
    assert_eq!(t.attributes, [("x".to_owned(), "9".to_owned())].into());
    // A payload without attributes leaves them alone.
    let keep = UpdateThingRequest {
        attribute_payload: Some(AttributePayload::default()),
        ..UpdateThingRequest::default()
    };
    let t = ok(r, case, r.update_thing("attr-1", &keep).await);
    assert_eq!(t.attributes, [("x".to_owned(), "9".to_owned())].into());
    assert_eq!(t.version, 5);
    // Replace with nothing clears them.
    let t = ok(
        r,
        case,
        r.update_thing(
            "attr-1",
            &UpdateThingRequest {
                attribute_payload: attrs(&[]),
                ..UpdateThingRequest::default()
            },
        )
        .await,
    );
    assert!(t.attributes.is_empty());
    // The stored thing is what the updates returned.
    assert_eq!(ok(r, case, r.describe_thing("attr-1").await), t);
    // An empty value in a create means "no attribute" too.
    let t = ok(
        r,
        case,
        r.create_thing("attr-2", &create_req(None, &[("a", ""), ("b", "1")]))
            .await,
    );
    assert_eq!(t.attributes, [("b".to_owned(), "1".to_owned())].into());
    ok(
        r,
        case,
        r.create_thing("attr-2", &create_req(None, &[("b", "1")])).await,
    );
    ok(r, case, r.delete_thing("attr-1", None).await);
    ok(r, case, r.delete_thing("attr-2", None).await);
}

async fn validation(r: &Registry) {
    let case = "validation";
    let long = "x".repeat(129);
    for bad in ["", "a b", "a/b", "a.b", "caf\u{e9}", long.as_str()] {
        let e = fails(
            r,
            case,
            r.create_thing(bad, &CreateThingRequest::default()).await,
            "InvalidRequestException",
        );
        assert_eq!(e.http_status(), 400);
        fails(r, case, r.describe_thing(bad).await, "InvalidRequestException");
        fails(
            r,
            case,
            r.create_thing_type(bad, &CreateThingTypeRequest::default()).await,
            "InvalidRequestException",
        );
        fails(
            r,
            case,
            r.create_thing_group(bad, &group_req(None)).await,
            "InvalidRequestException",
        );
        fails(
            r,
            case,
            r.create_thing("val-ok", &create_req(Some(bad), &[])).await,
            "InvalidRequestException",
        );
    }
    let max = "m".repeat(128);
    ok(
        r,
        case,
        r.create_thing(&max, &CreateThingRequest::default()).await,
    );
    ok(r, case, r.delete_thing(&max, None).await);
    let long_name = "n".repeat(129);
    let long_value = "v".repeat(801);
    for (k, v) in [
        ("a b", "1"),
        ("a=b", "1"),
        ("", "1"),
        (long_name.as_str(), "1"),
        ("k", "a b"),
        ("k", "{}"),
        ("k", long_value.as_str()),
    ] {
        fails(
            r,
            case,
            r.create_thing("val-attr", &create_req(None, &[(k, v)])).await,
            "InvalidRequestException",
        );
    }
    let okv = "v".repeat(800);
    ok(
        r,
        case,
        r.create_thing(
            "val-attr",
            &create_req(None, &[("k.@/:#,_-", "a=[b]"), ("n", okv.as_str())]),
        )
        .await,
    );
    fails(
        r,
        case,
        r.describe_thing("val-ok").await,
        "ResourceNotFoundException",
    );
    ok(r, case, r.delete_thing("val-attr", None).await);
    let bad_desc = CreateThingTypeRequest {
        thing_type_properties: Some(ThingTypeProperties {
            thing_type_description: Some("tab\tnot allowed".into()),
            searchable_attributes: None,
        }),
    };
    fails(
        r,
        case,
        r.create_thing_type("val-type", &bad_desc).await,
        "InvalidRequestException",
    );
    fails(
        r,
        case,
        r.describe_thing_type("val-type").await,
        "ResourceNotFoundException",
    );
}

async fn attribute_limits(r: &Registry) {
    let case = "attribute limits";
    ok(
        r,
        case,
        r.create_thing_type("lim-type", &CreateThingTypeRequest::default())
            .await,
    );
    let three: Vec<(String, String)> = (0..3).map(|i| (format!("a{i}"), "v".to_owned())).collect();
    let four: Vec<(String, String)> = (0..4).map(|i| (format!("a{i}"), "v".to_owned())).collect();
    let fifty: Vec<(String, String)> = (0..50).map(|i| (format!("a{i}"), "v".to_owned())).collect();
    let fifty_one: Vec<(String, String)> = (0..51).map(|i| (format!("a{i}"), "v".to_owned())).collect();
    let req = |ty: Option<&str>, a: &[(String, String)]| CreateThingRequest {
        thing_type_name: ty.map(str::to_owned),
        attribute_payload: Some(AttributePayload::replace(a.iter().cloned())),
    };
    ok(r, case, r.create_thing("lim-3", &req(None, &three)).await);
    fails(
        r,
        case,
        r.create_thing("lim-4", &req(None, &four)).await,
        "InvalidRequestException",
    );
    ok(
        r,
        case,
        r.create_thing("lim-50", &req(Some("lim-type"), &fifty)).await,
    );
    fails(
        r,
        case,
        r.create_thing("lim-51", &req(Some("lim-type"), &fifty_one)).await,
        "InvalidRequestException",
    );
    // A merge that would make a fourth attribute on an untyped thing fails and writes nothing.
    let add = UpdateThingRequest {
        attribute_payload: Some(AttributePayload::merge([("extra", "1")])),
        ..UpdateThingRequest::default()
    };
    fails(
        r,
        case,
        r.update_thing("lim-3", &add).await,
        "InvalidRequestException",
    );
    assert_eq!(ok(r, case, r.describe_thing("lim-3").await).version, 1);
    // ... but giving it a type at the same time allows it.
    let typed = UpdateThingRequest {
        thing_type_name: Some("lim-type".into()),
        ..add
    };
    let t = ok(r, case, r.update_thing("lim-3", &typed).await);
    assert_eq!((t.attributes.len(), t.version), (4, 2));
    // Removing the type of a thing with more than 3 attributes fails.
    let untype = UpdateThingRequest {
        remove_thing_type: true,
        ..UpdateThingRequest::default()
    };
    fails(
        r,
        case,
        r.update_thing("lim-3", &untype).await,
        "InvalidRequestException",
    );
    let both = UpdateThingRequest {
        remove_thing_type: true,
        thing_type_name: Some("lim-type".into()),
        ..UpdateThingRequest::default()
    };
    fails(
        r,
        case,
        r.update_thing("lim-3", &both).await,
        "InvalidRequestException",
    );
    let shrink = UpdateThingRequest {
        remove_thing_type: true,
        attribute_payload: Some(AttributePayload::merge([("extra", "")])),
        ..UpdateThingRequest::default()
    };
    let t = ok(r, case, r.update_thing("lim-3", &shrink).await);
    assert_eq!((t.type_name, t.attributes.len()), (None, 3));
    for t in ["lim-3", "lim-50"] {
        ok(r, case, r.delete_thing(t, None).await);
    }
}

async fn thing_types(r: &Registry) {
    let case = "thing types";
    let props = |d: &str| CreateThingTypeRequest {
        thing_type_properties: Some(ThingTypeProperties {
            thing_type_description: Some(d.into()),
            searchable_attributes: Some(vec!["serial".into()]),
        }),
    };
    let ty = ok(r, case, r.create_thing_type("tt-lamp", &props("A lamp")).await);
    assert_eq!(ty.arn, "arn:aws:iot:us-east-1:000000000000:thingtype/tt-lamp");
    assert!(!ty.deprecated && ty.deprecation_date_ms.is_none());
    assert_eq!(ty.searchable_attributes, ["serial"]);
    assert_eq!(
        ok(r, case, r.create_thing_type("tt-lamp", &props("A lamp")).await),
        ty
    );
    fails(
        r,
        case,
        r.create_thing_type("tt-lamp", &props("Other")).await,
        "ResourceAlreadyExistsException",
    );
    assert_eq!(ok(r, case, r.describe_thing_type("tt-lamp").await), ty);
    fails(
        r,
        case,
        r.describe_thing_type("tt-none").await,
        "ResourceNotFoundException",
    );
    let too_many = CreateThingTypeRequest {
        thing_type_properties: Some(ThingTypeProperties {
            thing_type_description: None,
            searchable_attributes: Some(vec!["a".into(), "b".into(), "c".into(), "d".into()]),
        }),
    };
    fails(
        r,
        case,
        r.create_thing_type("tt-many", &too_many).await,
        "InvalidRequestException",
    );

    // Things and types.
    fails(
        r,
        case,
        r.create_thing("tt-t0", &create_req(Some("tt-none"), &[])).await,
        "ResourceNotFoundException",
    );
    let t1 = ok(
        r,
        case,
        r.create_thing("tt-t1", &create_req(Some("tt-lamp"), &[])).await,
    );
    assert_eq!(t1.type_name.as_ref().map(|t| t.as_str()), Some("tt-lamp"));
    ok(
        r,
        case,
        r.create_thing("tt-t2", &CreateThingRequest::default()).await,
    );
    // Creating with a different type than the existing thing's is a different configuration.
    fails(
        r,
        case,
        r.create_thing("tt-t2", &create_req(Some("tt-lamp"), &[])).await,
        "ResourceAlreadyExistsException",
    );

    // Deprecation blocks new things and moving things to the type, not things that have it.
    let dep = ok(
        r,
        case,
        r.deprecate_thing_type("tt-lamp", &DeprecateThingTypeRequest::default())
            .await,
    );
    assert!(dep.deprecated && dep.deprecation_date_ms.is_some());
    let again = ok(
        r,
        case,
        r.deprecate_thing_type("tt-lamp", &DeprecateThingTypeRequest::default())
            .await,
    );
    assert_eq!(
        again.deprecation_date_ms, dep.deprecation_date_ms,
        "{case}: re-deprecating keeps the date"
    );
    let e = fails(
        r,
        case,
        r.create_thing("tt-t3", &create_req(Some("tt-lamp"), &[])).await,
        "InvalidRequestException",
    );
    assert_eq!(
        e.message(),
        "Can not create new thing with depreated thing type:tt-lamp"
    );
    fails(
        r,
        case,
        r.describe_thing("tt-t3").await,
        "ResourceNotFoundException",
    );
    let to_lamp = UpdateThingRequest {
        thing_type_name: Some("tt-lamp".into()),
        ..UpdateThingRequest::default()
    };
    fails(
        r,
        case,
        r.update_thing("tt-t2", &to_lamp).await,
        "InvalidRequestException",
    );
    ok(r, case, r.update_thing("tt-t1", &to_lamp).await);
    ok(
        r,
        case,
        r.update_thing(
            "tt-t1",
            &UpdateThingRequest {
                attribute_payload: attrs(&[("serial", "1")]),
                ..UpdateThingRequest::default()
            },
        )
        .await,
    );

    // Deletion: only deprecated, after the wait, and unused.
    ok(
        r,
        case,
        r.create_thing_type("tt-fresh", &CreateThingTypeRequest::default())
            .await,
    );
    fails(
        r,
        case,
        r.delete_thing_type("tt-fresh").await,
        "InvalidRequestException",
    );
    fails(
        r,
        case,
        r.delete_thing_type("tt-lamp").await,
        "InvalidRequestException",
    );
    let mut patient = suite_config();
    patient.limits.type_delete_delay = Duration::from_secs(3600);
    let waiting = Registry::new(Arc::clone(r.store()), patient);
    ok(
        r,
        case,
        r.update_thing(
            "tt-t1",
            &UpdateThingRequest {
                remove_thing_type: true,
                ..UpdateThingRequest::default()
            },
        )
        .await,
    );
    fails(
        r,
        case,
        waiting.delete_thing_type("tt-lamp").await,
        "InvalidRequestException",
    );
    assert!(r.describe_thing_type("tt-lamp").await.is_ok());

    // Undeprecating allows new things again.
    let undone = ok(
        r,
        case,
        r.deprecate_thing_type("tt-lamp", &DeprecateThingTypeRequest { undo_deprecate: true })
            .await,
    );
    assert!(!undone.deprecated && undone.deprecation_date_ms.is_none());
    ok(
        r,
        case,
        r.create_thing("tt-t3", &create_req(Some("tt-lamp"), &[])).await,
    );
    ok(
        r,
        case,
        r.deprecate_thing_type("tt-lamp", &DeprecateThingTypeRequest::default())
            .await,
    );
    fails(
        r,
        case,
        r.delete_thing_type("tt-lamp").await,
        "InvalidRequestException",
    );
    ok(r, case, r.delete_thing("tt-t3", None).await);
    ok(r, case, r.delete_thing_type("tt-lamp").await);
    fails(
        r,
        case,
        r.describe_thing_type("tt-lamp").await,
        "ResourceNotFoundException",
    );
    fails(
        r,
        case,
        r.delete_thing_type("tt-lamp").await,
        "ResourceNotFoundException",
    );
    fails(
        r,
        case,
        r.deprecate_thing_type("tt-lamp", &DeprecateThingTypeRequest::default())
            .await,
        "ResourceNotFoundException",
    );
    // The name is free again.
    ok(
        r,
        case,
        r.create_thing_type("tt-lamp", &CreateThingTypeRequest::default())
            .await,
    );

    // Listing types, with the prefix filter and paging.
    for i in 0..5 {
        ok(
            r,
            case,
            r.create_thing_type(&format!("ttl-{i}"), &CreateThingTypeRequest::default())
                .await,
        );
    }
    let all = collect(|p| async move { r.list_thing_types(Some("ttl-"), &p).await }, 2).await;
    assert_eq!(
        all.iter().map(|t| t.name.as_str().to_owned()).collect::<Vec<_>>(),
        ["ttl-0", "ttl-1", "ttl-2", "ttl-3", "ttl-4"]
    );
    let every = collect(|p| async move { r.list_thing_types(None, &p).await }, 3).await;
    assert!(every.iter().any(|t| t.name.as_str() == "tt-fresh"));
    for t in ["tt-t1", "tt-t2"] {
        ok(r, case, r.delete_thing(t, None).await);
    }
}

/// Every item of a listing, following `nextToken` with pages of `max` (checking each page's
/// size), in order.
async fn collect<T, F, Fut>(list: F, max: u32) -> Vec<T>
where
    F: Fn(PageRequest) -> Fut,
    Fut: std::future::Future<Output = Result<Page<T>, RegistryError>>,
{
    let mut out = Vec::new();
    let mut token = None;
    for _ in 0..10_000 {
        let page = match list(PageRequest::after(token, max)).await {
            Ok(p) => p,
            Err(e) => panic!("listing failed: {e}"),
        };
        assert!(page.items.len() <= max as usize, "page larger than maxResults");
        out.extend(page.items);
        match page.next_token {
            Some(t) => token = Some(t),
            None => return out,
        }
    }
    panic!("listing never ended")
}

async fn groups(r: &Registry) {
    let case = "thing groups";
    let root = ok(r, case, r.create_thing_group("gr-root", &group_req(None)).await);
    assert_eq!(root.arn, "arn:aws:iot:us-east-1:000000000000:thinggroup/gr-root");
    assert_eq!(
        (root.version, root.parent.as_ref(), root.root_to_parent.len()),
        (1, None, 0)
    );
    // A chain of 7 levels is allowed, the 8th is not.
    let mut parent = "gr-root".to_owned();
    for level in 2..=7 {
        let name = format!("gr-l{level}");
        let g = ok(
            r,
            case,
            r.create_thing_group(&name, &group_req(Some(&parent))).await,
        );
        assert_eq!(g.root_to_parent.len(), level - 1);
        assert_eq!(g.root_to_parent[0].name.as_str(), "gr-root");
        assert_eq!(g.parent.as_ref().map(|p| p.as_str()), Some(parent.as_str()));
        assert_eq!(
            g.root_to_parent.last().map(|p| p.name.as_str()),
            Some(parent.as_str())
        );
        parent = name;
    }
    fails(
        r,
        case,
        r.create_thing_group("gr-l8", &group_req(Some("gr-l7"))).await,
        "InvalidRequestException",
    );
    fails(
        r,
        case,
        r.describe_thing_group("gr-l8").await,
        "ResourceNotFoundException",
    );
    fails(
        r,
        case,
        r.create_thing_group("gr-orphan", &group_req(Some("gr-none")))
            .await,
        "InvalidRequestException",
    );
    fails(
        r,
        case,
        r.describe_thing_group("gr-orphan").await,
        "ResourceNotFoundException",
    );

    // Idempotent create; a different parent or properties is a conflict.
    let l2 = ok(r, case, r.describe_thing_group("gr-l2").await);
    assert_eq!(
        ok(
            r,
            case,
            r.create_thing_group("gr-l2", &group_req(Some("gr-root"))).await
        ),
        l2
    );
    fails(
        r,
        case,
        r.create_thing_group("gr-l2", &group_req(None)).await,
        "ResourceAlreadyExistsException",
    );
    let with_props = CreateThingGroupRequest {
        parent_group_name: Some("gr-root".into()),
        thing_group_properties: Some(ThingGroupProperties {
            thing_group_description: Some("different".into()),
            attribute_payload: None,
        }),
    };
    fails(
        r,
        case,
        r.create_thing_group("gr-l2", &with_props).await,
        "ResourceAlreadyExistsException",
    );

    // Updates: versions, merge, description, expectedVersion.
    let update =
        |d: Option<&str>, payload: Option<AttributePayload>, v: Option<u64>| UpdateThingGroupRequest {
            thing_group_properties: ThingGroupProperties {
                thing_group_description: d.map(str::to_owned),
                attribute_payload: payload,
            },
            expected_version: v,
        };
    let g = ok(
        r,
        case,
        r.update_thing_group("gr-root", &update(Some("Root"), attrs(&[("site", "a")]), Some(1)))
            .await,
    );
    assert_eq!((g.version, g.description.as_deref()), (2, Some("Root")));
    let g = ok(
        r,
        case,
        r.update_thing_group(
            "gr-root",
            &update(
                None,
                Some(AttributePayload::merge([("floor", "1"), ("site", "")])),
                None,
            ),
        )
        .await,
    );
    assert_eq!((g.version, g.description.as_deref()), (3, Some("Root")));
    assert_eq!(g.attributes, [("floor".to_owned(), "1".to_owned())].into());
    fails(
        r,
        case,
        r.update_thing_group("gr-root", &update(Some("x"), None, Some(2)))
            .await,
        "VersionConflictException",
    );
    assert_eq!(ok(r, case, r.describe_thing_group("gr-root").await), g);
    fails(
        r,
        case,
        r.update_thing_group("gr-none", &update(None, None, None)).await,
        "ResourceNotFoundException",
    );

    // Deleting: not while there are child groups; leaves first.
    let e = fails(
        r,
        case,
        r.delete_thing_group("gr-l6", None).await,
        "InvalidRequestException",
    );
    assert_eq!(
        e.message(),
        "Cannot delete thing group : gr-l6 when there are still child groups attached to it"
    );
    fails(
        r,
        case,
        r.delete_thing_group("gr-l7", Some(5)).await,
        "VersionConflictException",
    );
    ok(r, case, r.delete_thing_group("gr-l7", Some(1)).await);
    ok(r, case, r.delete_thing_group("gr-l6", None).await);
    ok(r, case, r.delete_thing_group("gr-l6", None).await);
    // The freed level can take a child again.
    ok(
        r,
        case,
        r.create_thing_group("gr-l6", &group_req(Some("gr-l5"))).await,
    );

    // Listing groups: all, roots, children, descendants, prefix.
    ok(r, case, r.create_thing_group("gr-other", &group_req(None)).await);
    ok(
        r,
        case,
        r.create_thing_group("gr-l2b", &group_req(Some("gr-root"))).await,
    );
    let list = |parent: Option<&str>, prefix: Option<&str>, recursive: Option<bool>| ListThingGroupsFilter {
        parent_group: parent.map(str::to_owned),
        name_prefix_filter: prefix.map(str::to_owned),
        recursive,
    };
    let group_names = |v: Vec<shoal_things::registry::ThingGroup>| {
        v.into_iter()
            .map(|g| g.name.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    let all = group_names(
        collect(
            |p| async move { r.list_thing_groups(&list(None, Some("gr-"), None), &p).await },
            3,
        )
        .await,
    );
    assert_eq!(
        all,
        [
            "gr-l2", "gr-l2b", "gr-l3", "gr-l4", "gr-l5", "gr-l6", "gr-other", "gr-root"
        ]
    );
    let roots = group_names(
        collect(
            |p| async move {
                r.list_thing_groups(&list(None, Some("gr-"), Some(false)), &p)
                    .await
            },
            1,
        )
        .await,
    );
    assert_eq!(roots, ["gr-other", "gr-root"]);
    let children = group_names(
        collect(
            |p| async move {
                r.list_thing_groups(&list(Some("gr-root"), None, Some(false)), &p)
                    .await
            },
            1,
        )
        .await,
    );
    assert_eq!(children, ["gr-l2", "gr-l2b"]);
    let descendants = group_names(
        collect(
            |p| async move { r.list_thing_groups(&list(Some("gr-root"), None, None), &p).await },
            2,
        )
        .await,
    );
    assert_eq!(
        descendants,
        ["gr-l2", "gr-l2b", "gr-l3", "gr-l4", "gr-l5", "gr-l6"]
    );
    let some = group_names(
        collect(
            |p| async move {
                r.list_thing_groups(&list(Some("gr-root"), Some("gr-l2"), Some(true)), &p)
                    .await
            },
            1,
        )
        .await,
    );
    assert_eq!(some, ["gr-l2", "gr-l2b"]);
    fails(
        r,
        case,
        r.list_thing_groups(&list(Some("gr-none"), None, None), &PageRequest::default())
            .await,
        "ResourceNotFoundException",
    );
    // Tear the hierarchy down, leaves first.
    for g in [
        "gr-l6", "gr-l5", "gr-l4", "gr-l3", "gr-l2", "gr-l2b", "gr-root", "gr-other",
    ] {
        ok(r, case, r.delete_thing_group(g, None).await);
    }
    let left = collect(
        |p| async move { r.list_thing_groups(&list(None, Some("gr-"), None), &p).await },
        50,
    )
    .await;
    assert!(left.is_empty(), "{case}: groups left: {left:?}");
}

async fn membership(r: &Registry) {
    let case = "group membership";
    for g in ["m-a", "m-b"] {
        ok(r, case, r.create_thing_group(g, &group_req(None)).await);
    }
    ok(
        r,
        case,
        r.create_thing_group("m-a1", &group_req(Some("m-a"))).await,
    );
    ok(
        r,
        case,
        r.create_thing_group("m-a2", &group_req(Some("m-a"))).await,
    );
    let t = ok(
        r,
        case,
        r.create_thing("m-t1", &CreateThingRequest::default()).await,
    );
    ok(
        r,
        case,
        r.create_thing("m-t2", &CreateThingRequest::default()).await,
    );

    ok(r, case, r.add_thing_to_thing_group(&member("m-a1", "m-t1")).await);
    ok(r, case, r.add_thing_to_thing_group(&member("m-a1", "m-t1")).await); // no-op
    ok(r, case, r.add_thing_to_thing_group(&member("m-b", "m-t1")).await);
    // Membership changes are not thing updates.
    assert_eq!(ok(r, case, r.describe_thing("m-t1").await).version, t.version);
    // One group per hierarchy: m-a and m-a2 share m-a1's root.
    for g in ["m-a", "m-a2"] {
        fails(
            r,
            case,
            r.add_thing_to_thing_group(&member(g, "m-t1")).await,
            "InvalidRequestException",
        );
    }
    fails(
        r,
        case,
        r.add_thing_to_thing_group(&member("m-none", "m-t1")).await,
        "ResourceNotFoundException",
    );
    fails(
        r,
        case,
        r.add_thing_to_thing_group(&member("m-b", "m-none")).await,
        "ResourceNotFoundException",
    );
    fails(
        r,
        case,
        r.add_thing_to_thing_group(&ThingGroupMembershipRequest::default())
            .await,
        "InvalidRequestException",
    );
    // By ARN, and ARNs that do not match.
    let g_a2 = ok(r, case, r.describe_thing_group("m-a2").await);
    let by_arn = ThingGroupMembershipRequest {
        thing_group_arn: Some(g_a2.arn.clone()),
        thing_arn: Some(r.config().arn("thing", "m-t2")),
        ..ThingGroupMembershipRequest::default()
    };
    ok(r, case, r.add_thing_to_thing_group(&by_arn).await);
    let mismatch = ThingGroupMembershipRequest {
        thing_arn: Some(r.config().arn("thing", "m-t1")),
        ..member("m-b", "m-t2")
    };
    fails(
        r,
        case,
        r.add_thing_to_thing_group(&mismatch).await,
        "InvalidRequestException",
    );
    let foreign = ThingGroupMembershipRequest {
        thing_group_arn: Some("arn:aws:iot:eu-west-1:111111111111:thinggroup/m-b".into()),
        thing_name: Some("m-t2".into()),
        ..ThingGroupMembershipRequest::default()
    };
    fails(
        r,
        case,
        r.add_thing_to_thing_group(&foreign).await,
        "InvalidRequestException",
    );

    // Both directions.
    let groups_of = |t: &'static str| async move {
        collect(|p| async move { r.list_thing_groups_for_thing(t, &p).await }, 1)
            .await
            .into_iter()
            .map(|g| g.name.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(groups_of("m-t1").await, ["m-a1", "m-b"]);
    assert_eq!(groups_of("m-t2").await, ["m-a2"]);
    let page = ok(
        r,
        case,
        r.list_thing_groups_for_thing("m-t1", &PageRequest::default())
            .await,
    );
    assert_eq!(page.items[0].arn, r.config().arn("thinggroup", "m-a1"));
    fails(
        r,
        case,
        r.list_thing_groups_for_thing("m-none", &PageRequest::default())
            .await,
        "ResourceNotFoundException",
    );
    let things_in = |g: &'static str, recursive: bool| async move {
        collect(
            |p| async move { r.list_things_in_thing_group(g, recursive, &p).await },
            1,
        )
        .await
        .into_iter()
        .map(|t| t.as_str().to_owned())
        .collect::<Vec<_>>()
    };
    assert_eq!(things_in("m-a1", false).await, ["m-t1"]);
    assert!(things_in("m-a", false).await.is_empty());
    assert_eq!(things_in("m-a", true).await, ["m-t1", "m-t2"]);
    fails(
        r,
        case,
        r.list_things_in_thing_group("m-none", false, &PageRequest::default())
            .await,
        "ResourceNotFoundException",
    );

    // Removing: idempotent, missing resources are errors.
    ok(
        r,
        case,
        r.remove_thing_from_thing_group(&member("m-a1", "m-t1")).await,
    );
    ok(
        r,
        case,
        r.remove_thing_from_thing_group(&member("m-a1", "m-t1")).await,
    );
    fails(
        r,
        case,
        r.remove_thing_from_thing_group(&member("m-none", "m-t1")).await,
        "ResourceNotFoundException",
    );
    assert_eq!(groups_of("m-t1").await, ["m-b"]);
    // Now another group of m-a's hierarchy is allowed.
    ok(r, case, r.add_thing_to_thing_group(&member("m-a", "m-t1")).await);
    assert_eq!(groups_of("m-t1").await, ["m-a", "m-b"]);

    // At most 10 groups per thing.
    for i in 0..10 {
        ok(
            r,
            case,
            r.create_thing_group(&format!("m-many{i:02}"), &group_req(None))
                .await,
        );
    }
    for i in 0..8 {
        ok(
            r,
            case,
            r.add_thing_to_thing_group(&member(&format!("m-many{i:02}"), "m-t1"))
                .await,
        );
    }
    fails(
        r,
        case,
        r.add_thing_to_thing_group(&member("m-many08", "m-t1")).await,
        "InvalidRequestException",
    );
    assert_eq!(groups_of("m-t1").await.len(), 10);
    ok(
        r,
        case,
        r.remove_thing_from_thing_group(&member("m-b", "m-t1")).await,
    );
    ok(
        r,
        case,
        r.add_thing_to_thing_group(&member("m-many08", "m-t1")).await,
    );

    // Clean up.
    for t in ["m-t1", "m-t2"] {
        ok(r, case, r.delete_thing(t, None).await);
    }
    for i in 0..10 {
        ok(
            r,
            case,
            r.delete_thing_group(&format!("m-many{i:02}"), None).await,
        );
    }
    for g in ["m-a1", "m-a2", "m-a", "m-b"] {
        ok(r, case, r.delete_thing_group(g, None).await);
    }
}

async fn deletes_clean_up_memberships(r: &Registry) {
    let case = "deletes clean up memberships";
    ok(r, case, r.create_thing_group("dc-g1", &group_req(None)).await);
    ok(r, case, r.create_thing_group("dc-g2", &group_req(None)).await);
    for t in ["dc-t1", "dc-t2"] {
        ok(r, case, r.create_thing(t, &CreateThingRequest::default()).await);
        ok(r, case, r.add_thing_to_thing_group(&member("dc-g1", t)).await);
        ok(r, case, r.add_thing_to_thing_group(&member("dc-g2", t)).await);
    }
    // Deleting a thing takes it out of its groups.
    ok(r, case, r.delete_thing("dc-t1", None).await);
    let page = ok(
        r,
        case,
        r.list_things_in_thing_group("dc-g1", false, &PageRequest::default())
            .await,
    );
    assert_eq!(names(&page, |t| t.as_str().to_owned()), ["dc-t2"]);
    // A new thing with the old name starts in no group.
    ok(
        r,
        case,
        r.create_thing("dc-t1", &CreateThingRequest::default()).await,
    );
    let page = ok(
        r,
        case,
        r.list_thing_groups_for_thing("dc-t1", &PageRequest::default())
            .await,
    );
    assert!(page.items.is_empty(), "{case}: recreated thing inherited groups");
    // Deleting a group takes its things out of it, and leaves the things.
    ok(r, case, r.delete_thing_group("dc-g1", None).await);
    let page = ok(
        r,
        case,
        r.list_thing_groups_for_thing("dc-t2", &PageRequest::default())
            .await,
    );
    assert_eq!(names(&page, |g| g.name.as_str().to_owned()), ["dc-g2"]);
    ok(r, case, r.describe_thing("dc-t2").await);
    // A new group with the old name starts empty.
    ok(r, case, r.create_thing_group("dc-g1", &group_req(None)).await);
    let page = ok(
        r,
        case,
        r.list_things_in_thing_group("dc-g1", false, &PageRequest::default())
            .await,
    );
    assert!(page.items.is_empty(), "{case}: recreated group inherited things");
    for t in ["dc-t1", "dc-t2"] {
        ok(r, case, r.delete_thing(t, None).await);
    }
    let page = ok(
        r,
        case,
        r.list_things_in_thing_group("dc-g2", false, &PageRequest::default())
            .await,
    );
    assert!(page.items.is_empty());
    for g in ["dc-g1", "dc-g2"] {
        ok(r, case, r.delete_thing_group(g, None).await);
    }
}

/// A thing for the filter checks: name, type, attributes.
type ThingSpec = (
    &'static str,
    Option<&'static str>,
    &'static [(&'static str, &'static str)],
);

async fn list_things_filters(r: &Registry) {
    let case = "ListThings filters";
    ok(
        r,
        case,
        r.create_thing_type("lf-sensor", &CreateThingTypeRequest::default())
            .await,
    );
    ok(
        r,
        case,
        r.create_thing_type("lf-lamp", &CreateThingTypeRequest::default())
            .await,
    );
    let specs: [ThingSpec; 6] = [
        ("lf-1", Some("lf-sensor"), &[("color", "red"), ("site", "berlin")]),
        ("lf-2", Some("lf-sensor"), &[("color", "blue")]),
        ("lf-3", Some("lf-lamp"), &[("color", "red"), ("site", "bern")]),
        ("lf-4", None, &[("color", "redish")]),
        ("lf-5", None, &[]),
        ("lf-6", Some("lf-lamp"), &[("site", "paris")]),
    ];
    for (name, ty, a) in specs {
        ok(r, case, r.create_thing(name, &create_req(ty, a)).await);
    }
    let q = |n: Option<&str>, v: Option<&str>, prefix: bool, ty: Option<&str>| ListThingsFilter {
        attribute_name: n.map(str::to_owned),
        attribute_value: v.map(str::to_owned),
        use_prefix_attribute_value: prefix,
        thing_type_name: ty.map(str::to_owned),
        name_prefix: Some("lf-".into()),
    };
    let run = |f: ListThingsFilter| async move {
        collect(
            |p| {
                let f = &f;
                async move { r.list_things(f, &p).await }
            },
            1,
        )
        .await
        .into_iter()
        .map(|t| t.name.as_str().to_owned())
        .collect::<Vec<_>>()
    };
    assert_eq!(
        run(q(None, None, false, None)).await,
        ["lf-1", "lf-2", "lf-3", "lf-4", "lf-5", "lf-6"]
    );
    assert_eq!(
        run(q(Some("color"), Some("red"), false, None)).await,
        ["lf-1", "lf-3"]
    );
    assert_eq!(
        run(q(Some("color"), Some("red"), true, None)).await,
        ["lf-1", "lf-3", "lf-4"]
    );
    assert_eq!(
        run(q(Some("site"), Some("ber"), true, None)).await,
        ["lf-1", "lf-3"]
    );
    assert_eq!(
        run(q(Some("site"), None, false, None)).await,
        ["lf-1", "lf-3", "lf-6"]
    );
    assert_eq!(run(q(None, None, false, Some("lf-lamp"))).await, ["lf-3", "lf-6"]);
    assert_eq!(
        run(q(Some("color"), Some("red"), false, Some("lf-lamp"))).await,
        ["lf-3"]
    );
    assert_eq!(
        run(q(Some("color"), Some("green"), false, None)).await,
        Vec::<String>::new()
    );
    assert_eq!(
        run(q(None, None, false, Some("lf-none"))).await,
        Vec::<String>::new()
    );
    let f = q(None, Some("red"), false, None);
    fails(
        r,
        case,
        r.list_things(&f, &PageRequest::default()).await,
        "InvalidRequestException",
    );
    let f = q(Some("bad name"), Some("red"), false, None);
    fails(
        r,
        case,
        r.list_things(&f, &PageRequest::default()).await,
        "InvalidRequestException",
    );
    // The listed things are complete records.
    let page = ok(
        r,
        case,
        r.list_things(
            &q(Some("color"), Some("blue"), false, None),
            &PageRequest::default(),
        )
        .await,
    );
    assert_eq!(page.items, vec![ok(r, case, r.describe_thing("lf-2").await)]);
    // Indexes follow updates: lf-2 turns red and becomes a lamp; lf-3 loses its color.
    ok(
        r,
        case,
        r.update_thing(
            "lf-2",
            &UpdateThingRequest {
                thing_type_name: Some("lf-lamp".into()),
                attribute_payload: Some(AttributePayload::merge([("color", "red")])),
                ..UpdateThingRequest::default()
            },
        )
        .await,
    );
    ok(
        r,
        case,
        r.update_thing(
            "lf-3",
            &UpdateThingRequest {
                attribute_payload: Some(AttributePayload::merge([("color", "")])),
                ..UpdateThingRequest::default()
            },
        )
        .await,
    );
    assert_eq!(
        run(q(Some("color"), Some("red"), false, None)).await,
        ["lf-1", "lf-2"]
    );
    assert_eq!(
        run(q(Some("color"), Some("blue"), false, None)).await,
        Vec::<String>::new()
    );
    assert_eq!(
        run(q(None, None, false, Some("lf-lamp"))).await,
        ["lf-2", "lf-3", "lf-6"]
    );
    assert_eq!(run(q(None, None, false, Some("lf-sensor"))).await, ["lf-1"]);
    assert_eq!(
        run(q(Some("color"), None, false, None)).await,
        ["lf-1", "lf-2", "lf-4"]
    );
    for (name, _, _) in specs {
        ok(r, case, r.delete_thing(name, None).await);
    }
    assert_eq!(
        run(q(Some("color"), Some("red"), false, None)).await,
        Vec::<String>::new()
    );
    assert_eq!(
        run(q(None, None, false, Some("lf-lamp"))).await,
        Vec::<String>::new()
    );
    assert_eq!(run(q(None, None, false, None)).await, Vec::<String>::new());
}

async fn paging(r: &Registry) {
    let case = "paging";
    // 120 things: pages of 50 are 50, 50, 20 with no duplicates, in name order.
    let mut expected = Vec::new();
    for i in 0..120 {
        let name = format!("pg-{i:03}");
        let a = if i % 2 == 0 { "even" } else { "odd" };
        ok(
            r,
            case,
            r.create_thing(&name, &create_req(None, &[("parity", a)])).await,
        );
        expected.push(name);
    }
    let filter = ListThingsFilter {
        name_prefix: Some("pg-".into()),
        ..ListThingsFilter::default()
    };
    let mut sizes = Vec::new();
    let mut seen = Vec::new();
    let mut token = None;
    loop {
        let page = ok(
            r,
            case,
            r.list_things(&filter, &PageRequest::after(token, 50)).await,
        );
        sizes.push(page.items.len());
        seen.extend(page.items.iter().map(|t| t.name.as_str().to_owned()));
        match page.next_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(sizes, [50, 50, 20], "{case}: page sizes");
    assert_eq!(seen, expected, "{case}: every thing once, in order");
    // The same pages again: stable.
    let first = ok(r, case, r.list_things(&filter, &PageRequest::first(50)).await);
    let second = ok(
        r,
        case,
        r.list_things(&filter, &PageRequest::after(first.next_token.clone(), 50))
            .await,
    );
    assert_eq!(names(&second, |t| t.name.as_str().to_owned()), expected[50..100]);
    // Exactly 100 matches: two full pages and no token after the second.
    let hundred = collect(
        |p| {
            let f = &filter;
            async move { r.list_things(f, &p).await }
        },
        100,
    )
    .await;
    assert_eq!(hundred.len(), 120);
    let page = ok(
        r,
        case,
        r.list_things(
            &ListThingsFilter {
                name_prefix: Some("pg-0".into()),
                ..ListThingsFilter::default()
            },
            &PageRequest::first(100),
        )
        .await,
    );
    assert_eq!((page.items.len(), page.next_token), (100, None));
    // The default page size is 50.
    let page = ok(r, case, r.list_things(&filter, &PageRequest::default()).await);
    assert_eq!(page.items.len(), 50);
    // A filtered listing pages over its matches only.
    let odd = ListThingsFilter {
        attribute_name: Some("parity".into()),
        attribute_value: Some("odd".into()),
        ..filter.clone()
    };
    let odd_names: Vec<String> = collect(
        |p| {
            let f = &odd;
            async move { r.list_things(f, &p).await }
        },
        7,
    )
    .await
    .into_iter()
    .map(|t| t.name.as_str().to_owned())
    .collect();
    assert_eq!(
        odd_names,
        expected.iter().skip(1).step_by(2).cloned().collect::<Vec<_>>()
    );
    let prefix_odd = ListThingsFilter {
        use_prefix_attribute_value: true,
        attribute_value: Some("od".into()),
        ..odd.clone()
    };
    assert_eq!(
        collect(
            |p| {
                let f = &prefix_odd;
                async move { r.list_things(f, &p).await }
            },
            9
        )
        .await
        .len(),
        60
    );
    // Without any filter (the plain AWS call) every thing appears once, in order.
    let all: Vec<String> = collect(
        |p| async move { r.list_things(&ListThingsFilter::default(), &p).await },
        37,
    )
    .await
    .into_iter()
    .map(|t| t.name.as_str().to_owned())
    .collect();
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "{case}: duplicates in the full listing");
    assert!(
        all.windows(2).all(|w| w[0] < w[1]),
        "{case}: full listing out of order"
    );
    assert!(expected.iter().all(|e| unique.contains(e)));

    // Groups in both directions page too.
    ok(r, case, r.create_thing_group("pg-group", &group_req(None)).await);
    for name in expected.iter().take(75) {
        ok(
            r,
            case,
            r.add_thing_to_thing_group(&member("pg-group", name)).await,
        );
    }
    let members: Vec<String> = collect(
        |p| async move { r.list_things_in_thing_group("pg-group", false, &p).await },
        20,
    )
    .await
    .into_iter()
    .map(|t| t.as_str().to_owned())
    .collect();
    assert_eq!(members, expected[..75]);
    ok(
        r,
        case,
        r.create_thing_group("pg-sub", &group_req(Some("pg-group"))).await,
    );
    for name in expected.iter().skip(70).take(10) {
        // Not allowed in two groups of one hierarchy.
        let res = r.add_thing_to_thing_group(&member("pg-sub", name)).await;
        if expected[..75].contains(name) {
            fails(r, case, res, "InvalidRequestException");
        } else {
            ok(r, case, res);
        }
    }
    let recursive: Vec<String> = collect(
        |p| async move { r.list_things_in_thing_group("pg-group", true, &p).await },
        16,
    )
    .await
    .into_iter()
    .map(|t| t.as_str().to_owned())
    .collect();
    assert_eq!(recursive, expected[..80]);
    ok(r, case, r.delete_thing_group("pg-sub", None).await);
    ok(r, case, r.delete_thing_group("pg-group", None).await);
    for name in &expected {
        ok(r, case, r.delete_thing(name, None).await);
    }
}

/// What [`registry_concurrency`] observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistryConcurrencyStats {
    /// Successful read-modify-write updates (with `expectedVersion`).
    pub checked_updates: usize,
    /// `VersionConflictException`s they ran into (and retried).
    pub conflicts: usize,
    /// Successful blind updates (without `expectedVersion`).
    pub blind_updates: usize,
}

/// Concurrent updates of one thing through `nodes` (several stores on one backend behave like
/// several Shoal nodes): `workers_per_node` tasks per node, each doing `updates_per_worker`
/// read-modify-write updates of a counter attribute with `expectedVersion` (retrying on
/// `VersionConflictException`) and as many blind updates. Then concurrent adds of one thing
/// to 14 groups, of which exactly 10 may succeed.
///
/// Checks that no update is lost (the final version is 1 + all updates, the counter equals the
/// checked updates), that every update got a distinct version, and that the group limit holds
/// across nodes.
///
/// # Panics
///
/// On a lost update, a duplicate version, an unexpected error or a broken limit.
pub async fn registry_concurrency(
    nodes: &[Arc<dyn RegistryStore>],
    thing: &str,
    workers_per_node: usize,
    updates_per_worker: usize,
) -> RegistryConcurrencyStats {
    let registries: Vec<Registry> = nodes
        .iter()
        .map(|s| Registry::new(Arc::clone(s), suite_config()))
        .collect();
    let Some(first) = registries.first() else {
        panic!("registry_concurrency needs at least one node");
    };
    let kind = first.store().kind();
    let case = "concurrent updates";
    ok(
        first,
        case,
        first.create_thing(thing, &create_req(None, &[("n", "0")])).await,
    );
    let conflicts = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (node, r) in registries.iter().enumerate() {
        for worker in 0..workers_per_node {
            let (r, thing, conflicts) = (r.clone(), thing.to_owned(), Arc::clone(&conflicts));
            tasks.spawn(async move {
                let mut versions = Vec::new();
                for i in 0..updates_per_worker {
                    // Read, modify, write with expectedVersion until it sticks.
                    loop {
                        let t = match r.describe_thing(&thing).await {
                            Ok(t) => t,
                            Err(e) => panic!("[{kind}] {case}: describe: {e}"),
                        };
                        let n: u64 = t.attributes.get("n").and_then(|n| n.parse().ok()).unwrap_or(0);
                        let req = UpdateThingRequest {
                            attribute_payload: Some(AttributePayload::merge([("n", (n + 1).to_string())])),
                            expected_version: Some(t.version),
                            ..UpdateThingRequest::default()
                        };
                        match r.update_thing(&thing, &req).await {
                            Ok(u) => {
                                versions.push(u.version);
                                break;
                            }
                            Err(RegistryError::VersionConflict(_)) => {
                                conflicts.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => panic!("[{kind}] {case}: checked update: {e}"),
                        }
                    }
                    // A blind update: never conflicts, must never be lost either.
                    let req = UpdateThingRequest {
                        attribute_payload: Some(AttributePayload::merge([(
                            "last",
                            format!("{node}-{worker}-{i}"),
                        )])),
                        ..UpdateThingRequest::default()
                    };
                    match r.update_thing(&thing, &req).await {
                        Ok(u) => versions.push(u.version),
                        Err(e) => panic!("[{kind}] {case}: blind update: {e}"),
                    }
                }
                versions
            });
        }
    }
    let mut versions = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(v) => versions.extend(v),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    let per_kind = registries.len() * workers_per_node * updates_per_worker;
    let total = 2 * per_kind;
    let last = ok(first, case, first.describe_thing(thing).await);
    assert_eq!(last.version, 1 + total as u64, "[{kind}] {case}: lost updates");
    assert_eq!(
        last.attributes.get("n").map(String::as_str),
        Some(per_kind.to_string().as_str()),
        "[{kind}] {case}: lost increments"
    );
    versions.sort_unstable();
    let want: Vec<u64> = (2..=1 + total as u64).collect();
    assert_eq!(versions, want, "[{kind}] {case}: versions not unique");

    // The groups-per-thing limit holds under concurrent adds from every node.
    let limit_case = "concurrent group adds";
    let member_thing = format!("{thing}-member");
    ok(
        first,
        limit_case,
        first
            .create_thing(&member_thing, &CreateThingRequest::default())
            .await,
    );
    let groups: Vec<String> = (0..14).map(|i| format!("{thing}-g{i:02}")).collect();
    for g in &groups {
        ok(
            first,
            limit_case,
            first.create_thing_group(g, &group_req(None)).await,
        );
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, g) in groups.iter().enumerate() {
        let r = registries[i % registries.len()].clone();
        let req = member(g, &member_thing);
        tasks.spawn(async move { r.add_thing_to_thing_group(&req).await });
    }
    let mut added = 0;
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(())) => added += 1,
            Ok(Err(RegistryError::InvalidRequest(_))) => {}
            Ok(Err(e)) => panic!("[{kind}] {limit_case}: {e}"),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    let limit = first.config().limits.max_groups_per_thing;
    assert_eq!(added, limit, "[{kind}] {limit_case}: adds that succeeded");
    let listed = collect(
        |p| {
            let t = &member_thing;
            async move { first.list_thing_groups_for_thing(t, &p).await }
        },
        250,
    )
    .await;
    assert_eq!(listed.len(), limit, "[{kind}] {limit_case}: groups listed");
    let mut in_groups = 0;
    for g in &groups {
        let page = ok(
            first,
            limit_case,
            first
                .list_things_in_thing_group(g, false, &PageRequest::default())
                .await,
        );
        in_groups += page.items.len();
    }
    assert_eq!(
        in_groups, limit,
        "[{kind}] {limit_case}: the two directions disagree"
    );

    // Clean up.
    ok(first, case, first.delete_thing(thing, None).await);
    ok(first, limit_case, first.delete_thing(&member_thing, None).await);
    for g in &groups {
        ok(first, limit_case, first.delete_thing_group(g, None).await);
    }
    RegistryConcurrencyStats {
        checked_updates: per_kind,
        conflicts: conflicts.load(Ordering::Relaxed),
        blind_updates: per_kind,
    }
}

/// The groups a thing is in and the things a group holds must always mirror each other; a
/// helper for backend tests that inspect a store after a crash or reopen.
pub async fn assert_memberships_consistent(r: &Registry, things: &[&str], groups: &[&str]) {
    let mut from_things = BTreeSet::new();
    for t in things {
        for g in collect(|p| async move { r.list_thing_groups_for_thing(t, &p).await }, 250).await {
            from_things.insert((g.name.as_str().to_owned(), (*t).to_owned()));
        }
    }
    let mut from_groups = BTreeSet::new();
    for g in groups {
        for t in collect(
            |p| async move { r.list_things_in_thing_group(g, false, &p).await },
            250,
        )
        .await
        {
            if things.contains(&t.as_str()) {
                from_groups.insert(((*g).to_owned(), t.as_str().to_owned()));
            }
        }
    }
    assert_eq!(
        from_things,
        from_groups,
        "[{}] memberships disagree",
        r.store().kind()
    );
}

#[cfg(test)]
mod tests {
    use shoal_things::registry::MemoryRegistryStore;

    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn memory_store_passes_the_suite() {
        run_registry_suite(Arc::new(MemoryRegistryStore::default())).await;
    }
}
