//! Peak RSS: the shipper's on one big episode, the receiver's under
//! concurrent uploads.
//!
//! For the receiver, each upload is a valid archive of its own episode id, built without
//! packing the payload once per id: a zstd stream may be several frames, so
//! an archive is frame A (the tar headers naming `<id>/` and
//! `<id>/data.bin`), frame B (the payload, compressed once and shared by
//! every upload) and frame C (`<id>/meta.json` and the end of the tar). Only
//! each digest is computed per id. The receiver validates all of it as it
//! would any archive; its `VmHWM` is read while it still runs (exact).

use crate::data::{self, Rng, csv, meta};
use crate::report::{Report, Row};
use crate::{Bench, measure};
use bytes::Bytes;
use labship_protocol::digest::Hasher;
use labship_tests::GOOD_COMMIT;
use labship_tests::process::Receiver;

fn header(path: &str, size: u64, dir: bool) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).expect("tar path");
    h.set_size(size);
    h.set_mode(if dir { 0o755 } else { 0o644 });
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(if dir {
        tar::EntryType::Directory
    } else {
        tar::EntryType::Regular
    });
    h.set_cksum();
    h
}

fn zst(bytes: &[u8]) -> Bytes {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("zstd");
    enc.multithread(2).expect("zstd workers");
    std::io::Write::write_all(&mut enc, bytes).expect("zstd write");
    Bytes::from(enc.finish().expect("zstd finish"))
}

pub(crate) fn receiver(b: &mut Bench, r: &Receiver, rep: &mut Report) {
    let s = b.scale;
    let (host, id) = b.host("mem");
    eprintln!(
        "bench: receiver memory: {} concurrent uploads of about {} MiB",
        s.uploads,
        s.upload_bytes >> 20
    );
    // Half random, half CSV; about 1.5x the body size before compression.
    let half = (s.upload_bytes * 3 / 4) as usize / 512 * 512;
    let mut rng = Rng::new(42);
    let mut payload = vec![0u8; half];
    rng.fill(&mut payload);
    payload.extend(csv(half, &mut rng));
    let shared = zst(&payload);
    let payload_len = payload.len() as u64;
    drop(payload);
    let uploads: Vec<(String, Bytes, Bytes, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..s.uploads)
            .map(|i| {
                let shared = shared.clone();
                scope.spawn(move || {
                    let ep = format!("mem-{i:02}");
                    let mut prefix = header(&format!("{ep}/"), 0, true).as_bytes().to_vec();
                    prefix.extend_from_slice(
                        header(&format!("{ep}/data.bin"), payload_len, false).as_bytes(),
                    );
                    let m = meta(&ep);
                    let mut suffix = header(&format!("{ep}/meta.json"), m.len() as u64, false)
                        .as_bytes()
                        .to_vec();
                    suffix.extend_from_slice(&m);
                    suffix.resize(suffix.len().div_ceil(512) * 512 + 1024, 0);
                    let (a, c) = (zst(&prefix), zst(&suffix));
                    let mut h = Hasher::new();
                    for part in [&a, &shared, &c] {
                        h.update(part);
                    }
                    (ep, a, c, h.finish().header_value())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("archive thread"))
            .collect()
    });
    let body_bytes = uploads[0].1.len() + shared.len() + uploads[0].2.len();

    let ca = reqwest::Certificate::from_pem(b.env.pki.ca_pem.as_bytes()).expect("CA");
    let pem = format!("{}{}", id.cert_pem, id.key_pem);
    let client = reqwest::Client::builder()
        .tls_certs_only([ca])
        .identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"))
        .build()
        .expect("client");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pid = r.child.id();
    let statuses = rt.block_on(async {
        let tasks: Vec<_> = uploads
            .into_iter()
            .map(|(ep, a, c, digest)| {
                let url = format!("{}/v1/episodes/{host}/{ep}", r.url);
                let len = a.len() + shared.len() + c.len();
                let mut parts = vec![a];
                parts.extend(
                    (0..shared.len())
                        .step_by(1 << 20)
                        .map(|o| shared.slice(o..(o + (1 << 20)).min(shared.len()))),
                );
                parts.push(c);
                let stream =
                    futures_util::stream::iter(parts.into_iter().map(Ok::<_, std::io::Error>));
                let req = client
                    .put(url)
                    .header("content-digest", digest)
                    .header("x-labship-commit", GOOD_COMMIT)
                    .header("content-type", "application/zstd")
                    .header("content-length", len)
                    .body(reqwest::Body::wrap_stream(stream));
                tokio::spawn(async move {
                    match req.send().await {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            (status, resp.text().await.unwrap_or_default())
                        }
                        Err(e) => (0, e.to_string()),
                    }
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("upload task"));
        }
        out
    });
    for (status, body) in &statuses {
        assert_eq!(*status, 201, "an upload was answered {status}: {body}");
    }
    crate::assert_stored(r, &host, s.uploads);
    let hwm = measure::vm_hwm(pid).expect("the receiver runs");
    rep.row(Row::lower(
        format!(
            "receiver peak RSS, {} concurrent {} MiB uploads (MiB)",
            s.uploads,
            body_bytes >> 20
        ),
        hwm as f64 / (1 << 20) as f64,
        128.0,
    ));
}

/// The shipper's peak RSS on one big episode.
pub(crate) fn shipper(b: &mut Bench, rep: &mut Report) {
    let s = b.scale;
    let gen_dir = b.env.path().join("gen-big");
    let ids = data::episodes(&gen_dir, "big", 1, s.big_bytes);
    let r = b.receiver("big");
    eprintln!("bench: shipper memory");
    let run = b.labship(&r, &gen_dir, &ids, "");
    rep.raw(
        "shipper_memory",
        &[("labship", std::slice::from_ref(&run))],
        s.big_bytes,
    );
    rep.row(Row::lower(
        format!(
            "shipper peak RSS, one {} MiB episode (MiB)",
            s.big_bytes >> 20
        ),
        run.peak_rss as f64 / (1 << 20) as f64,
        64.0,
    ));
}
