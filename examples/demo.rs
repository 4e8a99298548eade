//! A guided tour on a throwaway node: starts a private containerd (with its CRI plugin) and a
//! private registry, pushes a sample multi-platform image, runs `prepull pull` on it, and shows
//! what the kubelet would see through CRI. Nothing outside a temp dir is touched.
//!
//! Run through `scripts/demo.sh`, which installs what is needed and passes the binary's path.

use testbench as support;

use std::process::Command;
use std::time::Duration;

use support::{push_index, Containerd, ImageSpec, MediaFamily, Platform, Registry};

const MIB: usize = 1 << 20;

#[tokio::main]
async fn main() {
    let prepull = std::env::args()
        .nth(1)
        .expect("usage: demo PATH_TO_PREPULL_BINARY (scripts/demo.sh passes it)");

    step("Starting a throwaway containerd (CRI plugin on) and a local registry");
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let socket = containerd.socket().display().to_string();
    let root = containerd.root().display().to_string();
    println!("  containerd socket: {socket}\n  registry:          {host}");

    step("Pushing a sample image: linux/amd64 + linux/arm64, 3 layers of 4 MiB each");
    let specs = [
        ImageSpec::new(&[4 * MIB, 4 * MIB, 4 * MIB]).platform(Platform::linux_amd64()),
        ImageSpec::new(&[4 * MIB, 4 * MIB, 4 * MIB]).platform(Platform::linux_arm64()),
    ];
    let index = push_index(&host, "demo/hello", "1.0", MediaFamily::Oci, &specs, true).await;
    let image = format!("{host}/demo/hello:1.0");
    println!("  {image} -> {}", index.index.digest);

    let pull = |label: &str| {
        step(label);
        let args = [
            "pull",
            "--containerd",
            &socket,
            "--containerd-root",
            &root,
            // The throwaway containerd lives in /tmp: keep 1 GiB free there, not 15%.
            "--min-free-space",
            "1GiB",
            "--plain-http",
            &host,
            &image,
        ];
        println!("  $ prepull {}", args.join(" "));
        let status = Command::new(&prepull)
            .args(args)
            .status()
            .expect("run prepull");
        assert!(status.success(), "prepull pull failed: {status}");
    };
    pull("Pulling it with prepull (verified blobs into containerd, CRI image records)");

    step("What the kubelet sees: CRI ImageService/ImageStatus on the same socket");
    let digest_ref = format!("{host}/demo/hello@{}", index.index.digest);
    for name in [image.as_str(), digest_ref.as_str()] {
        let status =
            support::cri::wait_for_image(containerd.socket(), name, Duration::from_secs(20)).await;
        println!("  ImageStatus({name}):");
        println!("    id:           {}", status.id);
        println!("    repo_tags:    {:?}", status.repo_tags);
        println!("    repo_digests: {:?}", status.repo_digests);
        println!("    size:         {} bytes", status.size);
    }
    println!("  A pod using {image} with imagePullPolicy: IfNotPresent starts without pulling.");

    step("containerd's own view (ctr -n k8s.io images ls)");
    print!("{}", containerd.ctr_ok(&["-n", "k8s.io", "images", "ls"]));

    pull("Pulling again: containerd already has every blob, so nothing is downloaded");

    step("Checking the node's store: every blob read back and hashed, every snapshot present");
    let verify = ["verify", "--containerd", &socket, &image];
    println!("  $ prepull {}", verify.join(" "));
    let status = Command::new(&prepull)
        .args(verify)
        .status()
        .expect("run prepull");
    assert!(status.success(), "prepull verify failed: {status}");
    step("Done; the throwaway containerd and registry are removed on exit");
}

fn step(text: &str) {
    println!("\n==> {text}");
}
