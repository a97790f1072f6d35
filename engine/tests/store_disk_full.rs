//! A store whose disk fills up fails the writes that do not fit, keeps every acknowledged
//! one, and works again once there is room, without a restart. The full disk is the file
//! size limit (RLIMIT_FSIZE) of this test process, so this file holds this one test.

use mend_engine::store::{PutItem, PutOutcome, RedbStore, Store};
use mend_engine::{Id, Version};

/// Sets this process's soft file size limit (`prlimit`, util-linux); `None`: unlimited.
fn set_file_size_limit(bytes: Option<u64>) {
    let soft = bytes.map_or("unlimited".to_string(), |b| b.to_string());
    let status = std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--fsize={soft}:"))
        .status()
        .expect("run prlimit");
    assert!(status.success(), "prlimit failed");
}

#[tokio::test]
async fn a_store_works_again_after_its_disk_was_full_without_a_restart() {
    // Writes past the limit fail with EFBIG instead of killing the process: SIGXFSZ is
    // handled (and ignored) rather than left to its default action.
    let _sigxfsz =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(25)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let store = RedbStore::open(&path).unwrap();
    let value = |i: u32| blake3::hash(&i.to_be_bytes()).as_bytes().repeat(2048); // 64 KiB
    let put = |store: &RedbStore, i: u32| {
        let v = value(i);
        let item = PutItem {
            id: Id::from_key(&i.to_be_bytes()),
            version: Version::of_value(&v, 1, 0),
            value: &v,
        };
        store.put_batch(&[item])
    };
    let mut acked = Vec::new();
    for i in 0..16 {
        assert_eq!(put(&store, i).unwrap(), vec![PutOutcome::Written]);
        acked.push(i);
    }

    let size = std::fs::metadata(&path).unwrap().len();
    set_file_size_limit(Some(size + (2 << 20)));
    let mut failed = None;
    for i in 16..10_000 {
        match put(&store, i) {
            Ok(outcomes) => {
                assert_eq!(outcomes, vec![PutOutcome::Written]);
                acked.push(i);
            }
            Err(e) => {
                failed = Some((i, e.to_string()));
                break;
            }
        }
    }
    let (first_failed, error) = failed.expect("the file size limit stopped no write");
    eprintln!("write {first_failed} failed: {error}");
    set_file_size_limit(None);

    // Room again: the store takes writes without being reopened by its owner.
    for i in first_failed..first_failed + 4 {
        assert_eq!(
            put(&store, i).unwrap_or_else(|e| panic!("write {i} after the disk had room: {e}")),
            vec![PutOutcome::Written]
        );
        acked.push(i);
    }
    // Nothing acknowledged is lost, and the fingerprints are those of the data.
    for i in &acked {
        let id = Id::from_key(&i.to_be_bytes());
        let mut reader = store.open_value(&id).unwrap().expect("acknowledged value");
        let mut read = Vec::new();
        reader.read_to_end(&mut read).unwrap();
        assert!(read == value(*i), "value {i} differs");
    }
    let fps = store.partition_fingerprints(0, u16::MAX).unwrap();
    store.rebuild_fingerprints().unwrap();
    assert_eq!(store.partition_fingerprints(0, u16::MAX).unwrap(), fps);
}
