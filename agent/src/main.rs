//! cairn-agent: applies a node's profile and instance data at first boot. A thin shell over the library.
//!
//! Exit codes: 0 done, 1 a step failed, 2 bad input or usage.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cairn_agent::datasources;
use cairn_agent::report::STATUS_FILE;
use cairn_agent::run::{self, BAKED_PROFILE, Exit, Options, Phase};
use cairn_agent::target::Target;

const USAGE: &str = "usage:
  cairn-agent run system|network|snaps|kubernetes
                                          apply a phase on the running system (the units' entry point)
  cairn-agent apply --root DIR [--instance FILE] [--cmdline TEXT] [--imds-endpoint URL]
                    [--fw-cfg DIR] [--esp DIR] [--dmi DIR] [--dry-run]
                    [--kubernetes [--k8s PATH] [--containerd-socket PATH] [--kubelet-healthz URL]
                                  [--images-wait SECS] [--kubelet-wait SECS]]
                                          apply to a root folder, touching nothing else but what
                                          the kubernetes phase's k8s command and containerd do
  cairn-agent status [--root DIR]         print the status JSON
  cairn-agent check [PROFILE]             check a profile the way the agent reads it
  cairn-agent --version
  cairn-agent --help";

fn usage(problem: &str) -> ExitCode {
    eprintln!("cairn-agent: {problem}\n{USAGE}");
    ExitCode::from(2)
}

fn exit(e: Exit) -> ExitCode {
    ExitCode::from(e as u8)
}

fn main() -> ExitCode {
    // As the initrd's /init the agent is process 1: it sets up the verified root and becomes the real init.
    if std::process::id() == 1 {
        cairn_agent::init::main();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first() else {
        return usage("no command");
    };
    let rest = &args[1..];
    // `--help` or `-h` anywhere asks for the usage, which is then the answer, not an error.
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match command.as_str() {
        "--version" => {
            println!("cairn-agent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        "check" => {
            let path = rest.first().map(String::as_str).unwrap_or(BAKED_PROFILE);
            match cairn_profile::Profile::load_baked(Path::new(path)) {
                Ok(p) => {
                    println!("{path}: profile {} {} is valid", p.name, p.version);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cairn-agent: {e}");
                    ExitCode::from(2)
                }
            }
        }
        "run" => {
            let phase = match rest {
                [p] if p == "system" => Phase::System,
                [p] if p == "network" => Phase::Network,
                [p] if p == "snaps" => Phase::Snaps,
                [p] if p == "kubernetes" => Phase::Kubernetes,
                _ => return usage("run takes one phase: system, network, snaps or kubernetes"),
            };
            let mut sources = datasources::Config::live();
            // fw_cfg's sysfs folder appears only once its module is loaded.
            sources.load_module = Some(modprobe);
            let opts = Options {
                target: Target::live(),
                instance_file: None,
                sources,
                dry_run: false,
                kubernetes: Default::default(),
            };
            exit(run::run_phase(&opts, phase))
        }
        "apply" => match apply_options(rest) {
            Ok((opts, with_kubernetes)) => exit(run::apply_root(&opts, with_kubernetes)),
            Err(problem) => usage(&problem),
        },
        "status" => {
            let target = match rest {
                [] => Target::live(),
                [flag, dir] if flag == "--root" => Target::root_dir(Path::new(dir)),
                _ => return usage("status takes an optional --root DIR"),
            };
            match target.read_string(STATUS_FILE) {
                Ok(Some(text)) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Ok(None) => {
                    eprintln!("cairn-agent: no status yet ({STATUS_FILE} does not exist)");
                    ExitCode::from(1)
                }
                Err(e) => {
                    eprintln!("cairn-agent: {e}");
                    ExitCode::from(1)
                }
            }
        }
        other => usage(&format!("unknown command `{other}`")),
    }
}

fn modprobe(module: &str) -> Result<(), String> {
    cairn_profile::command::Command::new("modprobe")
        .args(["--", module])
        .package("kmod")
        .run()
        .map(drop)
        .map_err(|e| e.to_string())
}

fn seconds(name: &str, value: String) -> Result<std::time::Duration, String> {
    value
        .parse()
        .map(std::time::Duration::from_secs)
        .map_err(|_| format!("{name} {value}: not a number of seconds"))
}

fn apply_options(args: &[String]) -> Result<(Options, bool), String> {
    let mut kubernetes = cairn_agent::kubernetes::Settings::default();
    let mut with_kubernetes = false;
    let mut root = None;
    let mut instance_file = None;
    let mut cmdline = None;
    let mut imds = None;
    let mut fw_cfg = None;
    let mut esp = None;
    let mut dmi = None;
    let mut dry_run = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "--root" => root = Some(PathBuf::from(value("--root")?)),
            "--instance" => instance_file = Some(PathBuf::from(value("--instance")?)),
            "--cmdline" => cmdline = Some(value("--cmdline")?),
            "--imds-endpoint" => imds = Some(value("--imds-endpoint")?),
            "--fw-cfg" => fw_cfg = Some(PathBuf::from(value("--fw-cfg")?)),
            "--esp" => esp = Some(PathBuf::from(value("--esp")?)),
            "--dmi" => dmi = Some(PathBuf::from(value("--dmi")?)),
            "--dry-run" => dry_run = true,
            "--kubernetes" => with_kubernetes = true,
            "--k8s" => kubernetes.k8s = Some(PathBuf::from(value("--k8s")?)),
            "--containerd-socket" => {
                kubernetes.containerd_socket = PathBuf::from(value("--containerd-socket")?)
            }
            "--kubelet-healthz" => kubernetes.kubelet_healthz = value("--kubelet-healthz")?,
            "--images-wait" => {
                kubernetes.images_wait = seconds("--images-wait", value("--images-wait")?)?
            }
            "--kubelet-wait" => {
                kubernetes.kubelet_wait = seconds("--kubelet-wait", value("--kubelet-wait")?)?
            }
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    let root = root.ok_or("apply needs --root DIR")?;
    if !root.is_dir() {
        return Err(format!("--root {}: not a folder", root.display()));
    }
    let mut sources = datasources::Config::for_root(&root);
    sources.cmdline = cmdline.unwrap_or_default();
    if let Some(d) = fw_cfg {
        sources.fw_cfg_dir = d;
    }
    if esp.is_some() {
        sources.esp_dir = esp;
    }
    if let Some(d) = dmi {
        sources.dmi_dir = d;
    }
    sources.imds_endpoint = imds;
    Ok((
        Options {
            target: Target::root_dir(&root),
            instance_file,
            sources,
            dry_run,
            kubernetes,
        },
        with_kubernetes,
    ))
}
