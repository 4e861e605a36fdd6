//! The RocksDB store against the shared conformance suite, plus what only a disk store has:
//! reopening, format versions, sizes, concurrent writers.

use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;

use journeyd_store::{conformance, Error, Offset, Store, StoredJourney, WriteSet};
use journeyd_store_rocksdb::{keys, RocksStore, StoreOptions, FORMAT_VERSION};
use tempfile::TempDir;

fn small() -> StoreOptions {
    StoreOptions {
        block_cache_bytes: 1 << 20,
        write_buffer_bytes: 1 << 20,
        sync_writes: false,
        state_cache_bytes: 1 << 16,
    }
}

fn open(path: &Path) -> RocksStore {
    RocksStore::open(path, &small()).unwrap_or_else(|e| panic!("open: {e}"))
}

#[test]
fn passes_the_conformance_suite() {
    // The directories must outlive the stores made from them.
    let dirs = RefCell::new(Vec::new());
    conformance::run_all(&|| {
        let dir = TempDir::new().unwrap();
        let store = open(dir.path());
        dirs.borrow_mut().push(dir);
        Box::new(store)
    });
}

#[test]
fn passes_the_conformance_suite_without_the_state_cache() {
    let dirs = RefCell::new(Vec::new());
    conformance::run_all(&|| {
        let dir = TempDir::new().unwrap();
        let opts = StoreOptions {
            state_cache_bytes: 0,
            ..small()
        };
        let store = RocksStore::open(dir.path(), &opts).unwrap();
        dirs.borrow_mut().push(dir);
        Box::new(store)
    });
}

#[test]
fn passes_the_conformance_suite_with_sync_writes() {
    let dir = TempDir::new().unwrap();
    let opts = StoreOptions {
        sync_writes: true,
        ..small()
    };
    let store = RocksStore::open(dir.path(), &opts).unwrap();
    conformance::random_writes_match_model(&store);
}

fn journey(id: &str, version: u32) -> StoredJourney {
    StoredJourney {
        id: id.into(),
        version,
        digest: 7,
        file: format!("{id}.yaml"),
        source: "steps: []".into(),
        first_seen: 1_700_000_000_000,
    }
}

#[test]
fn reopening_keeps_everything() {
    let dir = TempDir::new().unwrap();
    let set = WriteSet {
        customers: vec![
            ("alice".into(), Some(b"a".to_vec())),
            ("bob".into(), Some(b"b".to_vec())),
            ("carol".into(), Some(Vec::new())),
        ],
        timer_partitions: vec![("alice".into(), 3)],
        owners: vec![],
        clear_timers: vec![],
        set_timers: vec![
            (-5, "alice".into()),
            (10, "bob".into()),
            (10, "carol".into()),
        ],
        offsets: vec![Offset {
            topic: "touchpoints".into(),
            partition: 2,
            next: 42,
        }],
        history: vec![
            ("alice".into(), b"h1".to_vec()),
            ("alice".into(), b"h2".to_vec()),
            ("bob".into(), b"h1".to_vec()),
        ],
        history_limit: 8,
        counts: vec![(2, b"counted".to_vec())],
        customers_existed: Some(vec![false, false, false]),
        timers_existed: None,
    };
    {
        let store = open(dir.path());
        store.write(&set).unwrap();
        store
            .write(&WriteSet {
                customers: vec![("bob".into(), None)],
                clear_timers: vec![(10, "bob".into())],
                ..WriteSet::default()
            })
            .unwrap();
        store
            .put_journeys(&[journey("welcome", 1), journey("welcome", 2)])
            .unwrap();
        assert_eq!((store.customer_count(), store.pending_timers()), (2, 2));
    }
    let store = open(dir.path());
    assert_eq!(store.customer_count(), 2, "customer counter reloaded");
    assert_eq!(store.pending_timers(), 2, "timer counter reloaded");
    assert_eq!(
        store.customers(&["alice", "bob", "carol"]).unwrap(),
        vec![Some(b"a".to_vec()), None, Some(Vec::new())]
    );
    assert_eq!(
        store.due_timers(i64::MAX, 10).unwrap(),
        vec![(-5, "alice".into()), (10, "carol".into())]
    );
    assert_eq!(store.offsets().unwrap(), set.offsets);
    assert_eq!(store.counts(2).unwrap(), Some(b"counted".to_vec()));
    assert_eq!(
        store.history("alice").unwrap(),
        vec![b"h1".to_vec(), b"h2".to_vec()],
        "history merged and reloaded"
    );
    assert!(store.history("bob").unwrap().is_empty(), "deleted with bob");
    assert_eq!(
        store.journeys().unwrap(),
        vec![journey("welcome", 1), journey("welcome", 2)]
    );
    // The counters keep counting from where they were.
    store
        .write(&WriteSet {
            customers: vec![("dave".into(), Some(b"d".to_vec()))],
            set_timers: vec![(1, "dave".into())],
            ..WriteSet::default()
        })
        .unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!((store.customer_count(), store.pending_timers()), (3, 3));
}

#[test]
fn size_is_positive_after_writes() {
    let dir = TempDir::new().unwrap();
    let store = open(dir.path());
    let customers = (0..1000)
        .map(|i| (format!("customer-{i}"), Some(vec![i as u8; 512])))
        .collect();
    store
        .write(&WriteSet {
            customers,
            ..WriteSet::default()
        })
        .unwrap();
    assert!(store.size_bytes() > 0);
    drop(store);
    // After reopening, the data is in SST files (the WAL is flushed at recovery).
    let store = open(dir.path());
    assert!(store.size_bytes() > 0);
}

fn raw(path: &Path) -> rocksdb::DB {
    rocksdb::DB::open_default(path).unwrap()
}

#[test]
fn a_newer_format_is_refused() {
    let dir = TempDir::new().unwrap();
    drop(open(dir.path()));
    {
        let db = raw(dir.path());
        db.put(
            keys::meta(keys::meta::FORMAT_VERSION),
            (FORMAT_VERSION + 1).to_be_bytes(),
        )
        .unwrap();
    }
    let err = RocksStore::open(dir.path(), &small()).unwrap_err();
    assert!(
        matches!(err, Error::FormatTooNew { found, supported, .. }
            if found == FORMAT_VERSION + 1 && supported == FORMAT_VERSION),
        "{err}"
    );
    assert!(!err.is_transient());
    let message = err.to_string();
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
    assert!(message.contains("newer journeyd"), "{message}");
}

#[test]
fn a_foreign_database_is_refused() {
    let dir = TempDir::new().unwrap();
    raw(dir.path()).put(b"hello", b"world").unwrap();
    let err = RocksStore::open(dir.path(), &small()).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains("not a journeyd state store"),
        "{err}"
    );
}

#[test]
fn a_locked_store_fails_to_open_with_its_path() {
    let dir = TempDir::new().unwrap();
    let _first = open(dir.path());
    let err = RocksStore::open(dir.path(), &small()).unwrap_err();
    assert!(matches!(err, Error::Open { .. }), "{err}");
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
}

#[test]
fn corrupt_values_name_their_key() {
    let dir = TempDir::new().unwrap();
    drop(open(dir.path()));
    raw(dir.path())
        .put(keys::offset("touchpoints", 3).unwrap(), b"short")
        .unwrap();
    let store = open(dir.path());
    let err = store.offsets().unwrap_err();
    assert!(!err.is_transient());
    assert_eq!(
        err.to_string(),
        "corrupt state store entry offsets/\"touchpoints\"/3: expected an 8-byte offset, found 5 bytes"
    );
}

#[test]
fn recount_repairs_counters() {
    let dir = TempDir::new().unwrap();
    {
        let store = open(dir.path());
        store
            .write(&WriteSet {
                customers: vec![("a".into(), Some(vec![1])), ("b".into(), Some(vec![2]))],
                set_timers: vec![(1, "a".into())],
                ..WriteSet::default()
            })
            .unwrap();
    }
    {
        let db = raw(dir.path());
        db.delete(keys::meta(keys::meta::CUSTOMER_COUNT)).unwrap();
    }
    let err = RocksStore::open(dir.path(), &small()).unwrap_err();
    assert!(err.to_string().contains("recount"), "{err}");
    {
        let db = raw(dir.path());
        db.put(keys::meta(keys::meta::CUSTOMER_COUNT), 0u64.to_be_bytes())
            .unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.customer_count(), 0, "damaged");
    assert_eq!(store.recount().unwrap(), (1, 2));
    assert_eq!((store.pending_timers(), store.customer_count()), (1, 2));
    drop(store);
    assert_eq!(open(dir.path()).customer_count(), 2, "repair persisted");
}

#[test]
fn concurrent_writers_keep_counters_exact() {
    let dir = TempDir::new().unwrap();
    let store = Arc::new(open(dir.path()));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for i in 0..200u32 {
                    // Every thread races on the same small key space.
                    let id = format!("c{}", (i * 7 + t) % 16);
                    let due = i64::from(i % 5);
                    let set = if i % 3 == 0 {
                        WriteSet {
                            customers: vec![(id.clone(), None)],
                            clear_timers: vec![(due, id)],
                            ..WriteSet::default()
                        }
                    } else {
                        WriteSet {
                            customers: vec![(id.clone(), Some(vec![t as u8]))],
                            set_timers: vec![(due, id)],
                            ..WriteSet::default()
                        }
                    };
                    store.write(&set).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let timers = store.due_timers(i64::MAX, usize::MAX).unwrap().len() as u64;
    let ids: Vec<String> = (0..16).map(|i| format!("c{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let customers = store.customers(&ids).unwrap().iter().flatten().count() as u64;
    assert_eq!(store.pending_timers(), timers);
    assert_eq!(store.customer_count(), customers);
    assert_eq!(
        store.recount().unwrap(),
        (timers, customers),
        "persisted counters too"
    );
}
