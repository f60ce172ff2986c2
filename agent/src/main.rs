//! cairn-agent: applies a node's profile and instance data at first boot. A thin shell over the library.
//!
//! Exit codes: 0 done, 1 a step failed, 2 bad input or usage.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cairn_agent::datasources;
use cairn_agent::report::STATUS_FILE;
use cairn_agent::run::{self, BAKED_PROFILE, Exit, Options, Phase};
use cairn_agent::target::Target;

/// The commands, each with its usage: `cairn-agent COMMAND --help` prints that command's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    Run,
    Apply,
    Status,
    Check,
    Update,
}

const CMDS: [Cmd; 5] = [Cmd::Run, Cmd::Apply, Cmd::Status, Cmd::Check, Cmd::Update];

const OVERVIEW: &str = "cairn-agent: the first-boot agent of cairn images

usage: cairn-agent COMMAND [OPTIONS]

commands:
  run PHASE          apply a phase on the running system, once (the units' entry point)
  apply --root DIR   apply the system and network phases to a root folder, or show what they
                     would change there (--dry-run)
  status             print the node's status JSON
  check [PROFILE]    check a profile the way the agent reads it
  update SOURCE      write a new version (`cairn push`'s payload) into the inactive slot, to boot next
  help [COMMAND]     this help, or a command's

options:
  -h, --help         this help; `cairn-agent COMMAND --help` for a command's
  -V, --version      print the version

Exit codes: 0 done, 1 a step failed, 2 bad input or usage.";

const RUN_USAGE: &str = "usage: cairn-agent run PHASE

Applies one phase on the running system, once, from the local instance sources (or the network's, for the
network phase); a phase done on an earlier boot applies nothing. What the units run: the console gets
`cairn-agent: PHASE ready {json}` or `failed {json}`, an error is also one line on stderr.

phases:
  system       machine id, hostname, users, files (cairn-agent.service)
  network      what instance data on the network adds (cairn-agent-network.service)
  snaps        the image's snaps, installed by its snapd (cairn-agent-snaps.service)
  kubernetes   the Kubernetes node (cairn-kubernetes.service)

options:
  -h, --help   this help";

const APPLY_USAGE: &str = "usage: cairn-agent apply --root DIR [OPTIONS]

Runs the system phase, then the network phase, on the root folder DIR, touching nothing outside it: no live
hostname and no systemctl calls. Each phase prints `cairn-agent: PHASE ready {json}`; an error is one line on
stderr, and the status (DIR/var/lib/cairn/status.json) has it.

options:
  --root DIR                 the root folder (required)
  --instance FILE            instance data from FILE instead of the sources
  --cmdline TEXT             the kernel command line (cairn.instance=, cairn.datasource=, cairn.verity=)
  --fw-cfg DIR               QEMU fw_cfg's sysfs folder (default DIR/sys/firmware/qemu_fw_cfg)
  --esp DIR                  the EFI system partition (default DIR/efi or DIR/boot/efi, if a folder)
  --dmi DIR                  the DMI sysfs folder (default DIR/sys/class/dmi/id)
  --imds-endpoint URL        the EC2 instance metadata service to ask (IMDSv2)
  --dry-run                  show what each step would change on DIR, given what it holds and the agent's
                             journal there; write nothing
  --kubernetes               run the kubernetes phase too, with:
    --k8s PATH               the distribution's command (default /snap/bin/k8s, /usr/local/bin/k8s, /usr/bin/k8s)
    --containerd-socket PATH containerd's socket (default /run/containerd/containerd.sock)
    --kubelet-healthz URL    the kubelet's health endpoint (default http://127.0.0.1:10248/healthz)
    --images-wait SECS       how long the preloaded images may take to reach containerd (default 300)
    --kubelet-wait SECS      how long the kubelet may take to be healthy (default 300)
  -h, --help                 this help";

const STATUS_USAGE: &str = "usage: cairn-agent status [OPTIONS]

Prints the node's status JSON (/var/lib/cairn/status.json, or DIR's): `ready`, this boot's `steps`, the last run
(`last_run`: phase, outcome, RFC 3339 times, error), the last good provisioning (`last_good`, kept whatever later
runs do) and when the node was first ready (`provisioned`), the agent's version and the image's (`image`: profile,
version, root hash). On a node, also both A/B slots (`slots`: partition name, running, the entry's title, root
hash and file, tries left, good, next boot) and the last rollback (`last_rollback`: title, root hash, reason).
Exits 1 when there is no status yet.

options:
  --root DIR       a root folder's status instead of the running system's (no slots, unless --disk)
  --disk PATH      read the slots from this disk (default: the one holding the running root)
  --esp DIR        the mounted ESP (default /efi)
  --cmdline TEXT   the running kernel's command line (default /proc/cmdline)
  -h, --help       this help";

const CHECK_USAGE: &str = "usage: cairn-agent check [PROFILE]

Checks a profile the way the agent reads it; PROFILE defaults to the baked one, /usr/lib/cairn/profile.toml.
Exits 2 when it is not valid, naming the line.

options:
  -h, --help   this help";

const UPDATE_USAGE: &str = "usage: cairn-agent update SOURCE [OPTIONS]

Writes the update payload SOURCE names into the inactive A/B slot and makes it the next boot, with 3 tries: if
it is not marked good by then, the running version boots again. SOURCE is a digest, never a tag:
  HOST[:PORT]/REPOSITORY@sha256:DIGEST   an OCI registry (HTTPS; plain HTTP only on the node's own loopback;
                                         anonymous, or the registry's anonymous Bearer tokens)
  oci-layout:DIR@sha256:DIGEST           an OCI image layout folder (`cairn push PROFILE oci-layout:DIR`)
Every blob is checked against its digest as it is written, and the written slot against the payload's root
hash; the running slot is never written. Prints the outcome as JSON; progress goes to stderr.

options:
  --reboot               reboot into the new version once it is written
  --allow-rolled-back    apply a version this node has rolled back from
  --disk PATH            the disk (default: the one holding the running root)
  --esp DIR              the mounted ESP (default /efi)
  --cmdline TEXT         the running kernel's command line (default /proc/cmdline)
  --root DIR             where /var/lib/cairn and the CA bundle are (default /)
  -h, --help             this help";

impl Cmd {
    fn parse(name: &str) -> Option<Cmd> {
        CMDS.into_iter().find(|c| c.name() == name)
    }

    fn name(self) -> &'static str {
        match self {
            Cmd::Run => "run",
            Cmd::Apply => "apply",
            Cmd::Status => "status",
            Cmd::Check => "check",
            Cmd::Update => "update",
        }
    }

    fn usage(self) -> &'static str {
        match self {
            Cmd::Run => RUN_USAGE,
            Cmd::Apply => APPLY_USAGE,
            Cmd::Status => STATUS_USAGE,
            Cmd::Check => CHECK_USAGE,
            Cmd::Update => UPDATE_USAGE,
        }
    }
}

fn is_help(arg: &str) -> bool {
    arg == "--help" || arg == "-h"
}

/// A usage error: the problem, then the command's usage line and where its help is, on stderr; exit 2.
fn usage(cmd: Option<Cmd>, problem: &str) -> ExitCode {
    match cmd {
        Some(c) => {
            let synopsis = c.usage().lines().next().unwrap_or_default();
            eprintln!(
                "cairn-agent: {problem}\n{synopsis}\n(`cairn-agent {} --help` for more)",
                c.name()
            );
        }
        None => eprintln!("cairn-agent: {problem}\n(`cairn-agent --help` for the commands)"),
    }
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
    let Some(first) = args.first() else {
        return usage(None, "no command");
    };
    let rest = &args[1..];
    let cmd = match first.as_str() {
        "--help" | "-h" => {
            println!("{OVERVIEW}");
            return ExitCode::SUCCESS;
        }
        "--version" | "-V" => {
            println!("cairn-agent {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        "help" => match rest {
            [] => {
                println!("{OVERVIEW}");
                return ExitCode::SUCCESS;
            }
            [name] => match Cmd::parse(name) {
                Some(c) => {
                    println!("{}", c.usage());
                    return ExitCode::SUCCESS;
                }
                None => return usage(None, &format!("no command `{name}`")),
            },
            _ => return usage(None, "help takes one command"),
        },
        other => match Cmd::parse(other) {
            Some(c) => c,
            None => return usage(None, &format!("unknown command `{other}`")),
        },
    };
    // `--help` or `-h` anywhere after a command asks for its usage, which is then the answer, not an error.
    if rest.iter().any(|a| is_help(a)) {
        println!("{}", cmd.usage());
        return ExitCode::SUCCESS;
    }
    match cmd {
        Cmd::Check => {
            let path = match rest {
                [] => BAKED_PROFILE,
                [p] if !p.starts_with('-') => p.as_str(),
                _ => return usage(Some(cmd), "check takes one profile"),
            };
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
        Cmd::Run => {
            let phase = match rest {
                [p] if p == "system" => Phase::System,
                [p] if p == "network" => Phase::Network,
                [p] if p == "snaps" => Phase::Snaps,
                [p] if p == "kubernetes" => Phase::Kubernetes,
                _ => {
                    return usage(
                        Some(cmd),
                        "run takes one phase: system, network, snaps or kubernetes",
                    );
                }
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
        Cmd::Apply => match apply_options(rest) {
            Ok((opts, with_kubernetes)) => exit(run::apply_root(&opts, with_kubernetes)),
            Err(problem) => usage(Some(cmd), &problem),
        },
        Cmd::Update => {
            let (opts, reboot) = match update_options(rest) {
                Ok(o) => o,
                Err(problem) => return usage(Some(cmd), &problem),
            };
            match cairn_agent::update::update(&opts) {
                Ok(outcome) => {
                    println!("{}", serde_json::to_string(&outcome).unwrap_or_default());
                    if reboot && outcome.written {
                        return match cairn_profile::command::Command::new("systemctl")
                            .arg("reboot")
                            .package("systemd")
                            .run()
                        {
                            Ok(_) => ExitCode::SUCCESS,
                            Err(e) => {
                                eprintln!("cairn-agent: update: rebooting: {e}");
                                ExitCode::from(1)
                            }
                        };
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cairn-agent: update: {e}");
                    ExitCode::from(if e.is_input() { 2 } else { 1 })
                }
            }
        }
        Cmd::Status => {
            let (target, slots) = match status_options(rest) {
                Ok(o) => o,
                Err(problem) => return usage(Some(cmd), &problem),
            };
            match target.read_string(STATUS_FILE) {
                Ok(Some(text)) => {
                    print!("{}", with_slots(&text, slots.as_ref()));
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
    }
}

/// `status`'s target, and where the slots are read (none for `--root DIR` alone: a folder has no disk).
fn status_options(
    args: &[String],
) -> Result<(Target, Option<cairn_agent::update::Options>), String> {
    let mut root = None;
    let mut disk = None;
    let mut esp = None;
    let mut cmdline = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "--root" => root = Some(PathBuf::from(value("--root")?)),
            "--disk" => disk = Some(PathBuf::from(value("--disk")?)),
            "--esp" => esp = Some(PathBuf::from(value("--esp")?)),
            "--cmdline" => cmdline = Some(value("--cmdline")?),
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    let target = match &root {
        Some(dir) => Target::root_dir(dir),
        None => Target::live(),
    };
    if root.is_some() && disk.is_none() {
        return Ok((target, None));
    }
    let cmdline = match cmdline {
        Some(c) => c,
        None => std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
    };
    Ok((
        target,
        Some(cairn_agent::update::Options {
            source: String::new(),
            disk,
            esp: esp.unwrap_or_else(|| PathBuf::from(cairn_profile::contract::ESP_MOUNT)),
            cmdline,
            root: root.unwrap_or_else(|| PathBuf::from("/")),
            allow_rolled_back: false,
            progress,
        }),
    ))
}

/// The status JSON with `slots` and `last_rollback` added (or `slots_error`, saying why they could not be read).
fn with_slots(status: &str, opts: Option<&cairn_agent::update::Options>) -> String {
    let Some(opts) = opts else {
        return status.to_string();
    };
    let Ok(serde_json::Value::Object(mut map)) = serde_json::from_str(status) else {
        return status.to_string();
    };
    match cairn_agent::update::slots(opts) {
        Ok(s) => {
            map.insert("slots".into(), serde_json::json!(s.slots));
            map.insert("last_rollback".into(), serde_json::json!(s.last_rollback));
        }
        Err(e) => {
            map.insert("slots_error".into(), e.to_string().into());
        }
    }
    let mut out = serde_json::to_string_pretty(&map).unwrap_or_default();
    out.push('\n');
    out
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

fn progress(line: &str) {
    eprintln!("cairn-agent: update: {line}");
}

fn update_options(args: &[String]) -> Result<(cairn_agent::update::Options, bool), String> {
    let mut source = None;
    let mut opts = cairn_agent::update::Options {
        source: String::new(),
        disk: None,
        esp: PathBuf::from(cairn_profile::contract::ESP_MOUNT),
        cmdline: String::new(),
        root: PathBuf::from("/"),
        allow_rolled_back: false,
        progress,
    };
    let mut cmdline = None;
    let mut reboot = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "--reboot" => reboot = true,
            "--allow-rolled-back" => opts.allow_rolled_back = true,
            "--disk" => opts.disk = Some(PathBuf::from(value("--disk")?)),
            "--esp" => opts.esp = PathBuf::from(value("--esp")?),
            "--cmdline" => cmdline = Some(value("--cmdline")?),
            "--root" => opts.root = PathBuf::from(value("--root")?),
            other if other.starts_with('-') => return Err(format!("unknown option `{other}`")),
            other if source.is_none() => source = Some(other.to_string()),
            _ => return Err("update takes one SOURCE".into()),
        }
    }
    opts.source = source.ok_or("update needs a SOURCE")?;
    opts.cmdline = match cmdline {
        Some(c) => c,
        None => {
            std::fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"))?
        }
    };
    Ok((opts, reboot))
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
