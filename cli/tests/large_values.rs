//! Values far larger than memory budgets move with bounded memory on both ends.

mod support;

use std::io::Write;

use support::Cluster;

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn reported_rss_kib(stderr: &[u8]) -> u64 {
    String::from_utf8_lossy(stderr)
        .lines()
        .find_map(|l| l.strip_prefix("mend: peak_rss_kib "))
        .and_then(|v| v.parse().ok())
        .expect("mend reports its peak RSS with MEND_REPORT_RSS set")
}

#[test]
fn a_256_mib_value_round_trips_with_memory_well_under_its_size() {
    const SIZE: usize = 256 << 20;
    let c = Cluster::start(1, 1);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("big.bin");
    {
        // Deterministic, incompressible content written in 1 MiB pieces.
        let mut f = std::io::BufWriter::new(std::fs::File::create(&src).unwrap());
        let mut xof = blake3::Hasher::new().update(b"big").finalize_xof();
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..SIZE / buf.len() {
            xof.fill(&mut buf);
            f.write_all(&buf).unwrap();
        }
    }
    let put = c
        .mend()
        .env("MEND_REPORT_RSS", "1")
        .args(["put", "-g", "1", "big", src.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let dst = tmp.path().join("back.bin");
    let get = c
        .mend()
        .env("MEND_REPORT_RSS", "1")
        .args(["get", "-g", "1", "big", "-o", dst.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        get.status.success(),
        "{}",
        String::from_utf8_lossy(&get.stderr)
    );
    assert_eq!(std::fs::metadata(&dst).unwrap().len(), SIZE as u64);
    let same = {
        let hash = |p: &std::path::Path| {
            let mut h = blake3::Hasher::new();
            h.update_reader(std::fs::File::open(p).unwrap()).unwrap();
            h.finalize()
        };
        hash(&src) == hash(&dst)
    };
    assert!(same, "value read back differs");

    let limit_kib = (SIZE as u64 / 1024) / 4; // a quarter of the value
    let client_put = reported_rss_kib(&put.stderr);
    let client_get = reported_rss_kib(&get.stderr);
    let node = vm_hwm_kib(c.nodes.as_ref().unwrap().id());
    eprintln!("peak RSS KiB: put {client_put}, get {client_get}, node {node}");
    assert!(client_put < limit_kib, "client put peak {client_put} KiB");
    assert!(client_get < limit_kib, "client get peak {client_get} KiB");
    assert!(node < limit_kib, "node peak {node} KiB");
}
