//! One test suite for the look-up table, run against both backends: the embedded
//! in-memory table and Redis (a real `redis-server` started here).

use std::net::{IpAddr, Ipv4Addr};

use peercache_core::hash::ObjectHash;
use peercache_core::protocol::{Load, Outcome, Report};
use peercache_server::store::{
    MemoryStore, PathWitness, RedisOptions, RedisStore, Store, StoreError, StoreLimits,
};
use peercache_tests::spawn_redis;

const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
const OTHER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9));

/// A dial string for a peer at `IP:port`.
fn dial(port: u16) -> Option<String> {
    Some(format!("peer:?direct=198.51.100.1:{port}"))
}

fn limits() -> StoreLimits {
    StoreLimits {
        ttl_ms: 60_000,
        max_strikes: 2,
        slow_threshold_ms: 500,
    }
}

fn load(active: u32, limit: u32) -> Option<Load> {
    Some(Load { active, limit })
}

fn report(source: &str, hash: ObjectHash, outcome: Outcome) -> Report {
    Report {
        peer_id: "client".into(),
        hash,
        source: source.into(),
        outcome,
        bytes: 10,
        duration_ms: 1,
        direct: None,
    }
}

async fn ids(store: &Store, h: &ObjectHash, now: u64) -> Vec<String> {
    store
        .holders(h, Some("client"), now, 8)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect()
}

/// The behaviour both backends must share.
async fn suite(store: Store) {
    let now = 1_000_000;
    let h = ObjectHash::of(b"object");
    let h2 = ObjectHash::of(b"other");

    // Unknown peers cannot announce; registration records the dial string.
    assert_eq!(
        store.announce("a", &[h], &[], None, now).await,
        Err(StoreError::UnknownPeer)
    );
    assert_eq!(
        store
            .register("a", IP, dial(7000), load(0, 4), now)
            .await
            .unwrap(),
        dial(7000)
    );
    assert_eq!(
        store
            .register("b", IP, dial(7001), load(0, 4), now)
            .await
            .unwrap(),
        dial(7001)
    );
    assert_eq!(
        store.register("c", IP, None, None, now).await.unwrap(),
        None
    );
    // A second process on a's identity (a `fetch` beside its `serve`) registers
    // without dial info, from wherever: the serving listing stays (the key, not
    // the address, proves who it is).
    assert_eq!(
        store
            .register("a", OTHER_IP, None, None, now)
            .await
            .unwrap(),
        dial(7000)
    );

    assert_eq!(
        store.announce("a", &[h, h2], &[], None, now).await.unwrap(),
        vec![h, h2]
    );
    store.announce("b", &[h], &[], None, now).await.unwrap();
    store.announce("c", &[h], &[], None, now).await.unwrap();
    // c has no address: never listed. Both a and b are.
    let mut listed = ids(&store, &h, now).await;
    listed.sort();
    assert_eq!(listed, ["a", "b"]);
    // The requester is excluded.
    let for_a: Vec<_> = store
        .holders(&h, Some("a"), now, 8)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert!(!for_a.contains(&"a".to_string()));

    // M9: most used first (after a load report resets pending referrals).
    for _ in 0..3 {
        store
            .report(&report("b", h, Outcome::Served))
            .await
            .unwrap();
    }
    store
        .announce("a", &[], &[], load(0, 4), now)
        .await
        .unwrap();
    store
        .announce("b", &[], &[], load(0, 4), now)
        .await
        .unwrap();
    assert_eq!(
        ids(&store, &h, now).await.first().map(String::as_str),
        Some("b")
    );

    // M12: referrals handed out count as load, so a crowd spreads.
    store
        .register("d", IP, dial(7002), load(0, 1), now)
        .await
        .unwrap();
    store
        .register("e", IP, dial(7003), load(0, 1), now)
        .await
        .unwrap();
    store.announce("d", &[h2], &[], None, now).await.unwrap();
    store.announce("e", &[h2], &[], None, now).await.unwrap();
    store.announce("a", &[], &[h2], None, now).await.unwrap();
    let first = ids(&store, &h2, now).await;
    let second = ids(&store, &h2, now).await;
    assert_eq!(first.len(), 2);
    assert_eq!(second.len(), 1, "the first peer is now full");
    assert_ne!(first[0], second[0]);
    assert!(
        ids(&store, &h2, now).await.is_empty(),
        "both full: nobody to refer"
    );
    // A report closes a referral: that peer is free again without waiting for a
    // load report.
    store
        .report(&report(&first[0], h2, Outcome::Served))
        .await
        .unwrap();
    assert_eq!(ids(&store, &h2, now).await, [first[0].clone()]);
    store
        .announce("d", &[], &[], load(0, 1), now)
        .await
        .unwrap();
    store
        .announce("e", &[], &[], load(0, 1), now)
        .await
        .unwrap();
    store
        .announce("e", &[], &[], load(1, 1), now)
        .await
        .unwrap();
    assert_eq!(ids(&store, &h2, now).await, ["d"]);
    // A peer at its limit is not referred.
    store
        .announce("d", &[], &[], load(1, 1), now)
        .await
        .unwrap();
    assert!(ids(&store, &h2, now).await.is_empty());

    // M8: slow peers go last; dead ones are dropped after three failed pings.
    store.record_ping("b", Some(900), None).await.unwrap();
    store.record_ping("a", Some(5), None).await.unwrap();
    assert_eq!(
        ids(&store, &h, now).await,
        ["a", "b"],
        "slow b is demoted despite its use"
    );
    for _ in 0..3 {
        store.record_ping("b", None, None).await.unwrap();
    }
    assert_eq!(ids(&store, &h, now).await, ["a"]);
    let serving: Vec<String> = store
        .serving_peers(now)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert!(!serving.contains(&"b".to_string()));

    // B10: a peer reached only through the relay goes after direct ones, and
    // the flag reaches the client.
    let path_of_a = || async {
        let rows = store.peer_rows(now).await.unwrap();
        rows.iter().find(|r| r.id == "a").and_then(|r| r.direct)
    };
    store
        .note_path("a", true, PathWitness::ServerPing)
        .await
        .unwrap();
    assert_eq!(
        path_of_a().await,
        Some(true),
        "the server's ping fills it in"
    );
    store
        .note_path("a", false, PathWitness::Client)
        .await
        .unwrap();
    let ranked = store.holders(&h, Some("client"), now, 8).await.unwrap();
    assert_eq!(ranked.first().map(|p| p.direct), Some(Some(false)));
    // The server, on a public address, goes direct where clients behind
    // routers cannot: its ping does not undo a client's finding.
    store
        .note_path("a", true, PathWitness::ServerPing)
        .await
        .unwrap();
    assert_eq!(path_of_a().await, Some(false), "a client's finding stands");
    store
        .note_path("a", true, PathWitness::Client)
        .await
        .unwrap();
    assert_eq!(
        path_of_a().await,
        Some(true),
        "a later client's finding replaces it"
    );

    // B6: a report counts only for a peer the client was referred to, once.
    store
        .book_offer("client", &h, &["a".into(), "b".into()], now)
        .await
        .unwrap();
    assert!(
        !store
            .take_offer("client", &h, "z", now, true)
            .await
            .unwrap()
    );
    assert!(!store.take_offer("other", &h, "a", now, true).await.unwrap());
    assert!(
        !store
            .take_offer("client", &h2, "a", now, true)
            .await
            .unwrap()
    );
    // A "failed" before the verdict does not use the referral up.
    assert!(
        store
            .take_offer("client", &h, "a", now, false)
            .await
            .unwrap()
    );
    assert!(
        store
            .take_offer("client", &h, "a", now, true)
            .await
            .unwrap()
    );
    assert!(
        !store
            .take_offer("client", &h, "a", now, true)
            .await
            .unwrap(),
        "once per referral"
    );
    assert!(
        !store
            .take_offer("client", &h, "a", now, false)
            .await
            .unwrap()
    );
    assert!(
        store
            .take_offer("client", &h, "b", now, true)
            .await
            .unwrap()
    );

    // B6: fetched-through-server bookkeeping.
    assert!(!store.fetched("a", &h).await.unwrap());
    store.record_fetch("a", &h).await.unwrap();
    assert!(store.fetched("a", &h).await.unwrap());

    // B6: verified mismatches give strikes; two delist.
    store
        .report(&report("a", h, Outcome::Mismatch))
        .await
        .unwrap();
    assert!(
        ids(&store, &h, now).await.is_empty(),
        "a mismatch removes the listing at once"
    );
    store.announce("a", &[h], &[], None, now).await.unwrap();
    store
        .report(&report("a", h, Outcome::Mismatch))
        .await
        .unwrap();
    assert_eq!(
        store.announce("a", &[h], &[], None, now).await,
        Err(StoreError::UnknownPeer)
    );
    assert_eq!(
        store.register("a", IP, dial(7000), None, now).await,
        Err(StoreError::UnknownPeer)
    );

    // M7: dropped objects and lapsed peers disappear.
    store
        .register("f", IP, dial(7004), load(0, 4), now)
        .await
        .unwrap();
    store.announce("f", &[h], &[], None, now).await.unwrap();
    assert!(ids(&store, &h, now).await.contains(&"f".to_string()));
    store.announce("f", &[], &[h], None, now).await.unwrap();
    assert!(!ids(&store, &h, now).await.contains(&"f".to_string()));
    store.announce("f", &[h], &[], None, now).await.unwrap();
    let later = now + 61_000;
    assert!(
        ids(&store, &h, later).await.is_empty(),
        "lapsed without a heartbeat"
    );
    store.expire(later).await.unwrap();
    let stats = store.stats(later).await.unwrap();
    assert_eq!(stats.peers, 0);
    assert!(stats.delisted >= 1);
    assert_eq!(
        store.announce("f", &[h], &[], None, later).await,
        Err(StoreError::UnknownPeer)
    );
}

#[tokio::test]
async fn memory_backend_passes_the_suite() {
    suite(Store::Memory(MemoryStore::new(limits()))).await;
}

#[tokio::test]
async fn redis_backend_passes_the_suite() {
    let redis = spawn_redis()
        .await
        .expect("redis-server must be installed (scripts/setup.sh)");
    let store = RedisStore::connect(&redis.url(), "suite:", limits())
        .await
        .unwrap();
    suite(Store::Redis(store)).await;
}

#[tokio::test]
async fn redis_backend_reports_an_outage_instead_of_hanging() {
    let mut redis = spawn_redis().await.expect("redis-server");
    let store = Store::Redis(
        RedisStore::connect(&redis.url(), "outage:", limits())
            .await
            .unwrap(),
    );
    store.register("a", IP, dial(1), None, 1).await.unwrap();
    redis.stop().await;
    let started = std::time::Instant::now();
    let err = store
        .holders(&ObjectHash::of(b"x"), None, 1, 8)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    redis.restart().await.unwrap();
    // The connection manager reconnects.
    let mut ok = false;
    for _ in 0..50 {
        if store.register("a", IP, dial(1), None, 2).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok, "the store recovers when Redis is back");
}

#[tokio::test]
async fn redis_over_tls_passes_the_suite() {
    let redis = peercache_tests::redis_setups::spawn_redis_tls()
        .await
        .expect("redis-server with TLS and openssl (scripts/setup.sh)");
    // Without the CA the server's certificate is refused: TLS is really on.
    assert!(
        RedisStore::connect(&redis.url(), "tls:", limits())
            .await
            .is_err(),
        "an untrusted certificate must fail the connection"
    );
    // Plain text to the TLS port does not work either.
    assert!(
        RedisStore::connect(
            &format!("redis://127.0.0.1:{}", redis.port),
            "tls:",
            limits()
        )
        .await
        .is_err()
    );
    let options = RedisOptions {
        ca_pem: Some(redis.ca_pem.clone()),
    };
    let store = RedisStore::connect_with(&redis.url(), "tls:", limits(), &options)
        .await
        .unwrap();
    suite(Store::Redis(store)).await;
}

#[tokio::test]
async fn redis_cluster_passes_the_suite() {
    let cluster = peercache_tests::redis_setups::spawn_redis_cluster()
        .await
        .expect("three cluster-enabled redis-servers");
    let store = RedisStore::connect(&cluster.url(), "cluster:", limits())
        .await
        .unwrap();
    suite(Store::Redis(store)).await;
    // A table under another name (another hash tag) does not see this one.
    let other = Store::Redis(
        RedisStore::connect(&cluster.url(), "other:", limits())
            .await
            .unwrap(),
    );
    assert_eq!(other.stats(1_000_000).await.unwrap(), Default::default());
}

#[tokio::test]
async fn one_replica_at_a_time_holds_the_lease() {
    let redis = spawn_redis().await.expect("redis-server");
    let a = Store::Redis(
        RedisStore::connect(&redis.url(), "lease:", limits())
            .await
            .unwrap(),
    );
    let b = Store::Redis(
        RedisStore::connect(&redis.url(), "lease:", limits())
            .await
            .unwrap(),
    );
    assert!(a.lead().await.unwrap());
    assert!(!b.lead().await.unwrap(), "a holds it");
    assert!(a.lead().await.unwrap(), "its holder renews it");
    // When the holder stops renewing, another takes over after the lease lapses.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("PEXPIRE")
        .arg("{lease}:lease")
        .arg(1)
        .query_async(&mut c)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert!(b.lead().await.unwrap());
    assert!(!a.lead().await.unwrap());
    // The memory table always leads (one process).
    assert!(
        Store::Memory(MemoryStore::new(limits()))
            .lead()
            .await
            .unwrap()
    );
}

/// Every key the table writes expires, or is one of the capped indexes that
/// expiry trims.
#[tokio::test]
async fn redis_keys_expire_or_shrink() {
    let redis = spawn_redis().await.expect("redis-server");
    let store = Store::Redis(
        RedisStore::connect(&redis.url(), "keys:", limits())
            .await
            .unwrap(),
    );
    let now = 1_000_000;
    let h = ObjectHash::of(b"k1");
    store
        .register("p", IP, dial(7000), load(0, 4), now)
        .await
        .unwrap();
    store.announce("p", &[h], &[], None, now).await.unwrap();
    store.record_fetch("p", &h).await.unwrap();
    store
        .book_offer("client", &h, &["p".into()], now)
        .await
        .unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut c)
        .await
        .unwrap();
    let indexes = ["{keys}:seen", "{keys}:serving", "{keys}:objects"];
    for k in &keys {
        assert!(k.starts_with("{keys}:"), "{k} carries the hash tag");
        let ttl: i64 = redis::cmd("PTTL").arg(k).query_async(&mut c).await.unwrap();
        assert!(
            ttl > 0 || indexes.contains(&k.as_str()),
            "{k} neither expires nor is a trimmed index"
        );
    }
    // Once the peer lapses, expiry empties the indexes and the listings.
    let later = now + 3 * 60_000;
    store.expire(later).await.unwrap();
    assert_eq!(store.stats(later).await.unwrap(), Default::default());
    let holders = format!("{{keys}}:holders:{}", h.to_hex());
    for k in indexes.iter().copied().chain([holders.as_str()]) {
        let n: i64 = redis::cmd("EXISTS")
            .arg(k)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(n, 0, "{k} is gone");
    }
}

#[tokio::test]
async fn a_referral_books_its_load_even_after_redis_lost_its_scripts() {
    let redis = spawn_redis().await.expect("redis-server");
    let store = Store::Redis(
        RedisStore::connect(&redis.url(), "flush:", limits())
            .await
            .unwrap(),
    );
    let now = 1_000_000;
    let h = ObjectHash::of(b"flushed");
    store
        .register("a", IP, dial(7000), load(0, 4), now)
        .await
        .unwrap();
    store.announce("a", &[h], &[], None, now).await.unwrap();
    // Redis forgets every script, as after a restart without persistence.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    // The decision still comes, and the booking it sends by the script's hash
    // (without a reply) found its script: the referral counts as load on `a`.
    assert_eq!(ids(&store, &h, now).await, ["a"]);
    let stats = store.holder_stats(&h, None, now).await.unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].pending, 1, "{stats:?}");
    // And so on for the next one.
    assert_eq!(ids(&store, &h, now).await, ["a"]);
    assert_eq!(
        store.holder_stats(&h, None, now).await.unwrap()[0].pending,
        2
    );
}
