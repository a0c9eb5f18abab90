//! Tenants: keys to tenants, each limit, replicas sharing one.
use super::*;
use axum::http::HeaderValue;
use std::collections::BTreeMap;

fn config(auth: bool, replicas: u32, tenant: TenantConfig) -> IngressConfig {
    IngressConfig {
        auth,
        replicas,
        tenants: BTreeMap::from([("acme".to_string(), tenant)]),
        ..IngressConfig::default()
    }
}

fn keyed(key: &str) -> TenantConfig {
    TenantConfig {
        api_key_sha256: vec![hash_key(key)],
        ..TenantConfig::default()
    }
}

fn bearer(value: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, HeaderValue::try_from(value).unwrap());
    headers
}

fn status(result: Result<Option<Arc<Tenant>>, AppError>) -> u16 {
    match result {
        Ok(_) => 200,
        Err(e) => e.status().as_u16(),
    }
}

#[test]
fn keys_name_tenants_and_anything_else_is_401() {
    let tenants = Tenants::from_config(&config(true, 1, keyed("sk-right")));
    let found = tenants
        .identify(&bearer("Bearer sk-right"))
        .unwrap()
        .unwrap();
    assert_eq!(&*found.name, "acme");
    assert_eq!(status(tenants.identify(&bearer("Bearer sk-wrong"))), 401);
    assert_eq!(
        status(tenants.identify(&bearer("sk-right"))),
        401,
        "no Bearer"
    );
    assert_eq!(status(tenants.identify(&bearer("Bearer "))), 401);
    assert_eq!(status(tenants.identify(&HeaderMap::new())), 401);
    let e = tenants.identify(&bearer("Bearer sk-wrong")).unwrap_err();
    assert!(
        !e.to_string().contains("sk-wrong"),
        "the key is never echoed"
    );

    let open = Tenants::from_config(&config(false, 1, keyed("sk-right")));
    assert!(
        open.identify(&HeaderMap::new()).unwrap().is_none(),
        "auth off"
    );
}

#[test]
fn requests_per_minute_refuse_with_the_wait_and_take_nothing() {
    let tenant = Tenant::new(
        "acme",
        &TenantConfig {
            requests_per_minute: Some(2),
            ..keyed("k")
        },
        1,
    );
    let ttl = Duration::from_secs(600);
    let first = tenant.admit("a", 10, ttl).unwrap();
    assert_eq!(first.requests.unwrap().remaining, 1);
    tenant.admit("b", 10, ttl).unwrap();
    match tenant.admit("c", 10, ttl) {
        Err(AppError::RateLimited {
            retry_after, quota, ..
        }) => {
            // One request per 30 s comes back.
            assert!(
                retry_after > Duration::from_secs(29) && retry_after <= Duration::from_secs(30),
                "{retry_after:?}"
            );
            let level = quota.requests.unwrap();
            assert_eq!((level.limit, level.remaining), (2, 0));
        }
        other => panic!("expected 429, got {other:?}"),
    }
}

#[test]
fn replicas_share_a_limit() {
    let tenant = Tenant::new(
        "acme",
        &TenantConfig {
            requests_per_minute: Some(10),
            ..keyed("k")
        },
        2,
    );
    let ttl = Duration::from_secs(600);
    let admitted = (0..10)
        .filter(|i| tenant.admit(&i.to_string(), 1, ttl).is_ok())
        .count();
    assert_eq!(admitted, 5, "each of 2 instances takes half of 10");
}

#[test]
fn tokens_per_minute_count_estimates_and_a_huge_request_waits_for_a_full_bucket() {
    let tenant = Tenant::new(
        "acme",
        &TenantConfig {
            tokens_per_minute: Some(1000),
            ..keyed("k")
        },
        1,
    );
    let ttl = Duration::from_secs(600);
    let quota = tenant.admit("a", 600, ttl).unwrap();
    assert_eq!(quota.tokens.unwrap().remaining, 400);
    assert!(matches!(
        tenant.admit("b", 600, ttl),
        Err(AppError::RateLimited { .. })
    ));
    let fresh = Tenant::new(
        "acme",
        &TenantConfig {
            tokens_per_minute: Some(1000),
            ..keyed("k")
        },
        1,
    );
    assert!(
        fresh.admit("huge", 50_000, ttl).is_ok(),
        "larger than the bucket: passes when it is full"
    );
}

#[test]
fn queued_places_free_on_the_final_reply_or_after_the_ttl() {
    let tenants = Tenants::from_config(&config(
        true,
        1,
        TenantConfig {
            max_queued: Some(2),
            ..keyed("k")
        },
    ));
    let tenant = tenants.by_name["acme"].clone();
    let ttl = tenants.queued_ttl();
    tenant.admit("a", 1, ttl).unwrap();
    tenant.admit("b", 1, ttl).unwrap();
    assert!(matches!(
        tenant.admit("c", 1, ttl),
        Err(AppError::RateLimited { .. })
    ));
    tenants.finished(Some("acme"), "a");
    tenant.admit("c", 1, ttl).unwrap();
    assert!(
        tenant.admit("d", 1, Duration::ZERO).is_ok(),
        "expired places are dropped"
    );
}
