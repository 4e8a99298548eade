//! Generates the Kubernetes CRI client (`runtime.v1`) from `proto/`, so prepull can ask
//! containerd's CRI plugin exactly what the kubelet asks.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/k8s.io/cri-api/runtime/v1/api.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&[proto], &["proto"])?;
    Ok(())
}
