//! The shipper's packer and the receiver agree: an archive packed by
//! `labship_shipper::archive::pack` from a producer-like tree (nested dirs,
//! names over 100 bytes, odd modes, a setuid file and a setgid directory as
//! under the setgid `episodes/`, binary data) is accepted by the real
//! receiver, which refuses those bits, and unpacks to the same bytes.

use labship_protocol::Id;
use labship_shipper::archive::pack;
use labship_tests::episode::{assert_same_meta, assert_same_tree, noise, unpack, write_episode};
use labship_tests::process::Receiver;
use labship_tests::{GOOD_COMMIT, TestEnv};
use std::os::unix::fs::PermissionsExt as _;

#[tokio::test]
async fn what_the_shipper_packs_the_receiver_stores_byte_for_byte() {
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let long = format!("deep/{}/{}.csv", "d".repeat(90), "f".repeat(60));
    let src = write_episode(
        &env.file("src"),
        "run-2026.11.23_a",
        Some(GOOD_COMMIT),
        &[
            ("frames/0001.bin", &noise(2_000_000, 7)),
            ("frames/0002.bin", b""),
            (long.as_str(), b"t,x\n0,1\n"),
        ],
    );
    let chmod = |rel: &str, mode| {
        std::fs::set_permissions(src.join(rel), std::fs::Permissions::from_mode(mode)).unwrap()
    };
    chmod("frames/0002.bin", 0o600);
    chmod("frames/0001.bin", 0o4755);
    chmod("frames", 0o2775);
    chmod("", 0o2770);
    // A file from last year: mtimes must survive the round trip
    // (assert_same_meta below; modes are compared masked to 0o777).
    std::fs::File::options()
        .write(true)
        .open(src.join(&long))
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_733_000_000))
        .unwrap();
    let id = Id::parse("run-2026.11.23_a").unwrap();
    let mut archive = Vec::new();
    let packed = pack(&src, &id, &mut archive, 3, 2, &Default::default()).unwrap();
    assert_eq!(packed.bytes, archive.len() as u64);

    let c = env.client(Some(&env.pki.client("lab-01")));
    let resp = c
        .put(format!("{}/v1/episodes/lab-01/{id}", r.url))
        .header("X-Labship-Commit", GOOD_COMMIT)
        .header("Content-Digest", packed.digest.header_value())
        .body(archive.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let stored = std::fs::read(r.store.join("lab-01").join(format!("{id}.tar.zst"))).unwrap();
    assert_eq!(stored, archive);
    let tar = zstd::decode_all(stored.as_slice()).unwrap();
    for e in tar::Archive::new(tar.as_slice()).entries().unwrap() {
        let e = e.unwrap();
        let mode = e.header().mode().unwrap();
        assert_eq!(mode & 0o7000, 0, "{:?} packed with mode {mode:o}", e.path());
    }
    let out = env.file("out/.keep");
    unpack(&stored, out.parent().unwrap());
    assert_same_tree(&src, &out.parent().unwrap().join(id.as_str()));
    assert_same_meta(&src, &out.parent().unwrap().join(id.as_str()));
}
