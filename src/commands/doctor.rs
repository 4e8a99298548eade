//! `prepull doctor`: why a pull of one image fails (or would), found step by step on the node.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::pull::PullerArgs;
use super::Output;
use crate::doctor::{self, Report, Step, Verdict};
use crate::oci::Document;
use crate::platform::Platform;

/// Arguments of `prepull doctor`.
#[derive(Debug, Args)]
#[command(
    about = "Explain an ErrImagePull / ImagePullBackOff: walk every step of one image's pull on this node",
    long_about = "Explain an ErrImagePull / ImagePullBackOff: walk, on this node, every step the \
        pull of one image takes, in the kubelet's order, and say at the first failing step what \
        is wrong and how to fix it.\n\n\
        Steps: the reference as the kubelet asks for it; the credential sources and which of \
        their entries match (with the mistakes that make the kubelet skip a secret); each \
        endpoint's name and connection (mirrors from hosts.toml first); TLS, the challenge and \
        each matching credential in turn; the tag or digest and the rate-limit headroom; the \
        platforms of an index; what containerd and CRI hold on the node (every blob hashed) \
        and the free space; the kubelet's settings that make it ask the registry anyway. \
        Credentials are named by where they come from, never shown.\n\n\
        Exit 0 when no step fails, 1 when one does, 2 on bad input.",
    after_help = "Examples:\n  \
        prepull doctor registry.example.com/team/app:1.4 --auth-file /etc/prepull/pull-secret\n  \
        prepull doctor nginx:1.25 --output json"
)]
pub struct DoctorArgs {
    /// The image, as the pod's spec names it.
    #[arg(value_name = "IMAGE")]
    pub image: String,

    #[command(flatten)]
    pub puller: PullerArgs,

    /// The kubelet's configuration file (its --config), for the settings that make it ask the
    /// registry even when the image is on the node.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/var/lib/kubelet/config.yaml"
    )]
    pub kubelet_config: PathBuf,

    /// Report format on stdout.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// Runs `prepull doctor`.
pub async fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let report = diagnose(&args).await?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string(&report)?),
        Output::Text => print_text(&report),
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Every step, in order; a step that needs what an earlier one could not get is skipped.
async fn diagnose(args: &DoctorArgs) -> anyhow::Result<Report> {
    let (reference, step) = doctor::reference::check(&args.image);
    let mut steps = vec![step];
    let Some(reference) = reference else {
        return Ok(Report::new(&args.image, steps));
    };
    let (found, step) = doctor::credentials::check(&args.puller.credential_config()?, &reference);
    steps.push(step);
    let options = args.puller.registry_options();
    let (reachable, network) = doctor::network::check(&options, &reference).await;
    steps.extend(network);
    let platform = args.puller.platform.clone().unwrap_or_else(Platform::host);
    let fetched = if reachable {
        let ask = doctor::registry::Ask {
            options: &options,
            reference: &reference,
            matching: &found.matching,
            platform: &platform,
        };
        let (fetched, registry) = doctor::registry::check(&ask).await;
        steps.extend(registry);
        fetched
    } else {
        for step in ["registry", "manifest", "platform"] {
            steps.push(Step::skipped(step, "the registry cannot be reached"));
        }
        None
    };
    let size = fetched.as_ref().and_then(|f| match &f.document {
        Document::Manifest(m, _) => Some(m.content_size()),
        Document::Index(..) => None,
    });
    let (node, usage) = node_step(args, &reference, size).await;
    steps.push(node);
    steps.push(doctor::kubelet::check(
        &args.kubelet_config,
        &reference,
        usage,
    ));
    Ok(Report::new(&args.image, steps))
}

/// The node step, and how much of containerd's filesystem pinned images take (for the
/// kubelet's image GC thresholds), when containerd can be asked.
async fn node_step(
    args: &DoctorArgs,
    reference: &crate::reference::Reference,
    size: Option<u64>,
) -> (Step, Option<doctor::kubelet::Usage>) {
    let socket = &args.puller.containerd.socket;
    let built = async {
        let puller = args.puller.build_with(false, true).await?;
        let store = args.puller.containerd.connect().await?;
        anyhow::Ok((puller, store))
    };
    match built.await {
        Ok((puller, store)) => {
            let step = doctor::node::check(&puller, &store, socket, reference, size).await;
            (step, doctor::node::pinned_usage(&puller, &store).await)
        }
        Err(e) => (
            Step::found(
                "node",
                Verdict::Fail,
                "containerd",
                format!("containerd at {} cannot be used: {e:#}", socket.display()),
                "check that containerd runs and that --containerd names its socket",
            ),
            None,
        ),
    }
}

fn print_text(report: &Report) {
    println!("prepull doctor {}", report.image);
    for step in &report.steps {
        println!(
            "{:<8} {:<12} {}",
            step.status.as_str(),
            step.step,
            step.summary
        );
        for detail in &step.details {
            println!("{:22}- {detail}", "");
        }
        if step.status == Verdict::Fail || step.status == Verdict::Warning {
            if let Some(cause) = step.cause {
                println!("{:22}cause: {cause}", "");
            }
            if let Some(fix) = &step.fix {
                println!("{:22}fix: {fix}", "");
            }
        }
    }
    match report.failure() {
        Some(step) => println!(
            "\nThe pull fails at step {} ({}).",
            step.step,
            step.cause.unwrap_or("see above")
        ),
        None => println!("\nNo step fails."),
    }
}
