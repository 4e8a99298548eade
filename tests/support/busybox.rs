//! Runnable images: layers built from named files (a static busybox, symlinks, directories)
//! rather than random bytes, with a real `Cmd`, pushed through a registry's HTTP API. The
//! containers they make actually run under containerd's CRI.
//!
//! The busybox is Debian's static one (`busybox-static`, installed by `scripts/setup.sh`): a
//! dynamically linked binary would not start in a root filesystem without a libc.

use std::io::Write;
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{StatusCode, Url};
use serde_json::json;

use super::image::{sha256_digest, Blob, MediaFamily, Platform, PushedImage};

/// Where `busybox-static` puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// One entry of a layer tar. Paths are relative to the root filesystem (`bin/sh`).
#[derive(Clone, Debug)]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    Symlink {
        path: String,
        target: String,
    },
    /// A hard link to `target` (an earlier entry of the same layer), with the mode containerd
    /// then gives the file they share.
    HardLink {
        path: String,
        target: String,
        mode: u32,
    },
}

impl Entry {
    /// A directory, mode 0755.
    pub fn dir(path: &str) -> Entry {
        Entry::Dir {
            path: path.into(),
            mode: 0o755,
        }
    }

    /// A regular file.
    pub fn file(path: &str, mode: u32, data: &[u8]) -> Entry {
        Entry::File {
            path: path.into(),
            mode,
            data: data.to_vec(),
        }
    }

    /// A hard link to `target`.
    pub fn hard_link(path: &str, target: &str, mode: u32) -> Entry {
        Entry::HardLink {
            path: path.into(),
            target: target.into(),
            mode,
        }
    }
}

/// A gzip'd tar layer built in memory (these layers are a few MiB at most).
#[derive(Clone, Debug)]
pub struct FileLayer {
    pub gzip: Vec<u8>,
    /// sha256 of the gzip'd bytes: the blob digest.
    pub digest: String,
    /// sha256 of the uncompressed tar: the config's `rootfs.diff_ids` entry.
    pub diff_id: String,
}

impl FileLayer {
    pub fn build(entries: &[Entry]) -> FileLayer {
        let mut tar = tar::Builder::new(Vec::new());
        for entry in entries {
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            match entry {
                Entry::Dir { path, mode } => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(*mode);
                    header.set_size(0);
                    tar.append_data(&mut header, format!("{path}/"), std::io::empty())
                }
                Entry::File { path, mode, data } => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(data.len() as u64);
                    tar.append_data(&mut header, path, data.as_slice())
                }
                Entry::HardLink { path, target, mode } => {
                    header.set_entry_type(tar::EntryType::Link);
                    header.set_mode(*mode);
                    header.set_size(0);
                    tar.append_link(&mut header, path, target)
                }
                Entry::Symlink { path, target } => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    tar.append_link(&mut header, path, target)
                }
            }
            .unwrap_or_else(|e| panic!("add {entry:?} to a layer tar: {e}"));
        }
        let tar = tar.into_inner().expect("finish layer tar");
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(&tar).expect("gzip layer");
        let gzip = gz.finish().expect("finish gzip");
        FileLayer {
            digest: sha256_digest(&gzip),
            diff_id: sha256_digest(&tar),
            gzip,
        }
    }
}

impl FileLayer {
    /// A layer holding one file `path` of `size` zero bytes: it compresses about a thousand to
    /// one, so a blob of a few hundred KiB unpacks to hundreds of MiB. Streamed through the
    /// system's `gzip`, never whole in memory.
    pub fn zeros(path: &str, size: u64) -> FileLayer {
        use std::io::{Read as _, Seek as _};
        use std::process::{Command, Stdio};
        let mut out = tempfile::tempfile().expect("create a temp file for a layer");
        let mut child = Command::new("gzip")
            .args(["-9", "-n", "-c"])
            .stdin(Stdio::piped())
            .stdout(out.try_clone().expect("clone layer file handle"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run gzip (Debian package gzip): {e}"));
        let mut stdin = std::io::BufWriter::with_capacity(1 << 20, child.stdin.take().unwrap());
        let mut tar_hash = ring::digest::Context::new(&ring::digest::SHA256);
        let mut put = |bytes: &[u8]| {
            tar_hash.update(bytes);
            stdin
                .write_all(bytes)
                .expect("write the layer tar into gzip");
        };
        let mut header = tar::Header::new_gnu();
        header.set_path(path).expect("a tar path");
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(size);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        put(header.as_bytes());
        let zeros = vec![0u8; 1 << 20];
        let mut left = size.next_multiple_of(512) + 1024;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            put(&zeros[..n]);
            left -= n as u64;
        }
        stdin.flush().expect("write the layer tar into gzip");
        drop(stdin);
        assert!(
            child.wait().expect("wait for gzip").success(),
            "gzip failed"
        );
        out.rewind().expect("rewind the layer");
        let mut gzip = Vec::new();
        out.read_to_end(&mut gzip).expect("read the layer");
        let diff_id = tar_hash.finish();
        let diff_id = format!(
            "sha256:{}",
            diff_id
                .as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        FileLayer {
            digest: sha256_digest(&gzip),
            diff_id,
            gzip,
        }
    }
}

/// A root filesystem holding Debian's static busybox as `/bin/busybox`, `/bin/sh` pointing at it,
/// and the usual empty directories.
pub fn busybox_layer() -> FileLayer {
    FileLayer::build(&busybox_entries())
}

/// The entries of [`busybox_layer`], for layers that hold more beside them.
pub fn busybox_entries() -> Vec<Entry> {
    let path = Path::new(BUSYBOX);
    let data = std::fs::read(path).unwrap_or_else(|e| {
        panic!(
            "cannot read {BUSYBOX} ({e}): install Debian's busybox-static (scripts/setup.sh does)"
        )
    });
    vec![
        Entry::dir("bin"),
        Entry::File {
            path: "bin/busybox".into(),
            mode: 0o755,
            data,
        },
        // busybox picks the applet from argv[0]'s basename.
        Entry::Symlink {
            path: "bin/sh".into(),
            target: "busybox".into(),
        },
        Entry::dir("etc"),
        Entry::Dir {
            path: "tmp".into(),
            mode: 0o1777,
        },
    ]
}

/// The node's own platform: busybox is a native binary, and CRI only runs images of it.
pub fn node_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    Platform {
        os: "linux".into(),
        architecture: architecture.into(),
        variant: (architecture == "arm64").then(|| "v8".to_string()),
    }
}

/// Pushes an OCI image made of `layers` whose config runs `cmd`, tagged `tag` in `repo`.
pub async fn push_runnable(
    registry_host: &str,
    repo: &str,
    tag: &str,
    layers: &[&FileLayer],
    cmd: &[&str],
) -> PushedImage {
    push_runnable_for(registry_host, repo, tag, layers, cmd, node_platform()).await
}

/// [`push_runnable`] with a config that names `platform` (whatever the layers hold).
pub async fn push_runnable_for(
    registry_host: &str,
    repo: &str,
    tag: &str,
    layers: &[&FileLayer],
    cmd: &[&str],
    platform: Platform,
) -> PushedImage {
    let family = MediaFamily::Oci;
    let base = Url::parse(&format!("http://{registry_host}/")).expect("registry host");
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("build HTTP client");

    let mut blobs = Vec::with_capacity(layers.len());
    for layer in layers {
        let blob = blob_of(&layer.gzip, family.layer());
        upload_blob(&client, &base, repo, &blob, layer.gzip.clone()).await;
        blobs.push(blob);
    }
    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
    let mut config = json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "config": {
            "Cmd": cmd,
            "Env": ["PATH=/bin"],
            "WorkingDir": "/",
            // Keeps images that share layers and command apart (distinct image IDs).
            "Labels": { "prepull.test/image": format!("{repo}:{tag}") },
        },
    });
    if let Some(v) = &platform.variant {
        config["variant"] = json!(v);
    }
    let config_bytes = serde_json::to_vec(&config).expect("serialize config");
    let config_blob = blob_of(&config_bytes, family.config());
    upload_blob(&client, &base, repo, &config_blob, config_bytes).await;

    let manifest_bytes = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": family.manifest(),
        "config": config_blob.descriptor(),
        "layers": blobs.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    }))
    .expect("serialize manifest");
    let manifest = blob_of(&manifest_bytes, family.manifest());
    put_manifest(&client, &base, repo, tag, &manifest, &manifest_bytes).await;
    PushedImage {
        manifest,
        manifest_bytes,
        config: config_blob,
        layers: blobs,
        diff_ids,
        platform,
    }
}

pub(crate) fn blob_of(bytes: &[u8], media_type: &str) -> Blob {
    Blob {
        digest: sha256_digest(bytes),
        size: bytes.len() as u64,
        media_type: media_type.to_string(),
    }
}

/// Monolithic upload: `POST .../blobs/uploads/` for a Location, then `PUT <location>&digest=`.
pub(crate) async fn upload_blob(
    client: &reqwest::Client,
    base: &Url,
    repo: &str,
    blob: &Blob,
    body: Vec<u8>,
) {
    let start = base
        .join(&format!("v2/{repo}/blobs/uploads/"))
        .expect("upload URL");
    let resp = client
        .post(start.clone())
        .header(CONTENT_LENGTH, 0)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {start}: {e}"));
    let resp = expect_status(resp, StatusCode::ACCEPTED, "start blob upload").await;
    let location = resp
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("POST {start}: 202 without a Location header"));
    let mut put = start
        .join(location)
        .unwrap_or_else(|e| panic!("bad upload Location {location:?}: {e}"));
    put.query_pairs_mut().append_pair("digest", &blob.digest);
    let resp = client
        .put(put.clone())
        .header(CONTENT_TYPE, "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT {put}: {e}"));
    expect_status(
        resp,
        StatusCode::CREATED,
        &format!("upload blob {}", blob.digest),
    )
    .await;
}

pub(crate) async fn put_manifest(
    client: &reqwest::Client,
    base: &Url,
    repo: &str,
    tag: &str,
    manifest: &Blob,
    bytes: &[u8],
) {
    let url = base
        .join(&format!("v2/{repo}/manifests/{tag}"))
        .expect("manifest URL");
    let resp = client
        .put(url.clone())
        .header(CONTENT_TYPE, &manifest.media_type)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
    let resp = expect_status(resp, StatusCode::CREATED, &format!("put manifest {tag}")).await;
    let got = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok());
    assert_eq!(
        got,
        Some(manifest.digest.as_str()),
        "{url}: Docker-Content-Digest"
    );
}

async fn expect_status(resp: reqwest::Response, want: StatusCode, what: &str) -> reqwest::Response {
    if resp.status() == want {
        return resp;
    }
    let status = resp.status();
    let url = resp.url().clone();
    let body = resp.text().await.unwrap_or_default();
    panic!("{what}: {url} answered {status}, expected {want}: {body}");
}
