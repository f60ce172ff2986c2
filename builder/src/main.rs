//! The `cairn` command: a thin shell over the library. Exit codes: 0 done, 1 the build failed, 2 bad input.

mod cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cli::{MessageFormat, Out};
use serde_json::json;

use cairn::build::{BuildError, BuildOptions};
use cairn::cache::maintain::{self, human};
use cairn::cache::{Cache, CacheError};
use cairn::pin::PinError;
use cairn_profile::{Format, Profile};
use clap::{CommandFactory, Parser, Subcommand};

/// What stops a command.
#[derive(Debug, thiserror::Error)]
enum Error {
    /// `cairn validate`'s finding.
    #[error(transparent)]
    Profile(#[from] cairn_profile::Error),
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Init(cairn::init::InitError),
    #[error("writing to stdout: {0}")]
    Output(std::io::Error),
    #[error("{}: {stale} pin(s) stale: run `cairn pin {}`", profile.display(), profile.display())]
    Stale { profile: PathBuf, stale: usize },
    #[error(transparent)]
    Inspect(cairn::inspect::InspectError),
    /// `cairn diff` exits as diff(1) does: any trouble is 2.
    #[error(transparent)]
    Diff(cairn::inspect::InspectError),
    #[error(transparent)]
    Boot(cairn::boot::BootError),
    #[error(transparent)]
    Push(#[from] cairn::push::PushError),
    /// The guest booted, and the node did not come up.
    #[error("{disk}: {outcome} after {seconds:.0} s: {note}")]
    NotReady {
        disk: String,
        outcome: &'static str,
        seconds: f64,
        note: String,
    },
}

const BUILD_FAILED: u8 = 1;
const BAD_INPUT: u8 = 2;

/// 1 when the work failed, 2 when the input (profile, options, environment) was wrong; clap exits 2 for usage.
fn exit_code(e: &Error) -> u8 {
    match e {
        Error::Profile(_) => BAD_INPUT,
        Error::Pin(e) => match e {
            PinError::Read { .. } | PinError::Profile(_) | PinError::NotRewritable(_) => BAD_INPUT,
            PinError::Registry { .. } | PinError::Write(_) => BUILD_FAILED,
        },
        Error::Build(e) => match e {
            BuildError::Profile(_)
            | BuildError::Placeholder(_)
            | BuildError::OutFolder(_)
            | BuildError::Epoch(_)
            | BuildError::Agent(_)
            | BuildError::CacheLocation(_) => BAD_INPUT,
            BuildError::SecureBoot(e) if e.is_bad_input() => BAD_INPUT,
            BuildError::SecureBoot(_) => BUILD_FAILED,
            BuildError::Snaps(e) if e.is_bad_input() => BAD_INPUT,
            BuildError::Space(cairn::space::SpaceError::TooLittle { .. }) => BAD_INPUT,
            // image.slot-size too small for the root: the profile's to fix.
            BuildError::Disk(cairn::disk::DiskError::Layout(_)) => BAD_INPUT,
            BuildError::Space(_) => BUILD_FAILED,
            BuildError::Cache(_)
            | BuildError::Snaps(_)
            | BuildError::Sbom(_)
            | BuildError::Resolve(_)
            | BuildError::Preload(_)
            | BuildError::Pull(_)
            | BuildError::Assemble(_)
            | BuildError::Files(_)
            | BuildError::System(_)
            | BuildError::Output(_)
            | BuildError::Disk(_)
            | BuildError::Report(_) => BUILD_FAILED,
        },
        Error::Runtime(_) => BUILD_FAILED,
        Error::Cache(CacheError::NoHome) | Error::Usage(_) => BAD_INPUT,
        Error::Stale { .. } | Error::Output(_) => BUILD_FAILED,
        Error::Init(cairn::init::InitError::Write { .. }) => BUILD_FAILED,
        Error::Init(_) => BAD_INPUT,
        Error::Cache(CacheError::Io { .. }) => BUILD_FAILED,
        Error::Inspect(e) if e.is_bad_input() => BAD_INPUT,
        Error::Inspect(_) => BUILD_FAILED,
        Error::Diff(_) => BAD_INPUT,
        Error::Push(e) if e.is_bad_input() => BAD_INPUT,
        Error::Push(_) => BUILD_FAILED,
        Error::Boot(e) if e.is_bad_input() => BAD_INPUT,
        Error::Boot(_) | Error::NotReady { .. } => BUILD_FAILED,
    }
}

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "Builds immutable, verified node images from a TOML profile",
    after_help = "Start: `cairn init`, edit cairn.toml, `cairn pin cairn.toml`, `cairn build cairn.toml --out out`.\nExit codes: 0 done, 1 the work failed, 2 bad input (profile, options, environment)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Only warnings and errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// More detail on stderr (-vv: everything). `CAIRN_LOG` (a tracing filter) overrides both.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Colour on stderr: auto (a terminal, unless NO_COLOR is set), always or never.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    color: Color,
    /// Results and errors as text, or as one JSON message each on stdout (log lines on stderr become JSON too).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "human",
        value_name = "FORMAT"
    )]
    message_format: MessageFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AccelArg {
    Tcg,
    Kvm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

impl Color {
    /// NO_COLOR (https://no-color.org): any non-empty value turns colour off unless asked for explicitly.
    fn on_stderr(self) -> bool {
        match self {
            Color::Always => true,
            Color::Never => false,
            Color::Auto => {
                std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                    && std::io::IsTerminal::is_terminal(&std::io::stderr())
            }
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Check a profile, offline.
    #[command(
        after_help = "Examples:\n  cairn validate profiles/worker.toml\n  cairn validate --message-format json cairn.toml | jq .warnings"
    )]
    Validate { profile: PathBuf },
    /// Resolve each rock's tag to the digest its registry serves and rewrite the profile in place.
    #[command(
        after_help = "Examples:\n  cairn pin cairn.toml             # rewrite the digests in place\n  cairn pin --dry-run cairn.toml   # show what would change\n  cairn pin --check cairn.toml     # in CI: exit 1 when a pin is stale"
    )]
    Pin {
        profile: PathBuf,
        /// Change nothing; exit 1 when a pin is stale (for CI).
        #[arg(long, conflicts_with = "dry_run")]
        check: bool,
        /// Show what would change, and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Build the profile's outputs.
    #[command(
        after_help = "Examples:\n  cairn build cairn.toml --out out\n  cairn build cairn.toml --out out --format raw --format qcow2\n  SOURCE_DATE_EPOCH=1700000000 cairn build cairn.toml --out out   # the same bytes on every machine\n  cairn build cairn.toml --message-format json | jq -r .root_hash"
    )]
    Build {
        profile: PathBuf,
        /// Output folder.
        #[arg(long, default_value = "out")]
        out: PathBuf,
        /// Output format (repeatable); replaces the profile's `image.formats`.
        #[arg(long = "format", value_name = "F", value_parser = parse_format)]
        formats: Vec<Format>,
        /// Cache folder [default: $CAIRN_CACHE, $XDG_CACHE_HOME/cairn, ~/.cache/cairn].
        #[arg(long)]
        cache: Option<PathBuf>,
        /// The static cairn-agent to install [default: $CAIRN_AGENT, beside cairn, the workspace's musl build].
        #[arg(long)]
        agent: Option<PathBuf>,
        /// Sign systemd-boot and the UKI for Secure Boot with this RSA key: a PEM file, or a PKCS#11 URI
        /// (`pkcs11:...`, through OpenSSL's pkcs11 engine). Never stored in the image or the report.
        #[arg(long, value_name = "KEY", requires = "secure_boot_cert")]
        secure_boot_key: Option<String>,
        /// The certificate (PEM or DER) of the Secure Boot key: enrolled in the firmware's db, stored in the image.
        #[arg(long, value_name = "CERT")]
        secure_boot_cert: Option<PathBuf>,
        /// Sign with a command instead of a key (a KMS, an HSM's tool): it reads the bytes to sign on stdin and
        /// writes their RSA PKCS#1 v1.5 SHA-256 signature on stdout, e.g. `openssl dgst -sha256 -sign KEY`.
        #[arg(
            long,
            value_name = "COMMAND",
            requires = "secure_boot_cert",
            conflicts_with = "secure_boot_key"
        )]
        secure_boot_sign_command: Option<String>,
        /// How a machine in Secure Boot setup mode is offered the key (PK, KEK and db on the ESP): `manual` (a
        /// boot menu entry), `force` (enrolled at once, then a reset: for VMs) or `off`.
        #[arg(long, value_name = "HOW", default_value = "manual", value_parser = parse_enroll)]
        secure_boot_enroll: cairn::disk::enroll::Enroll,
    },
    /// Look after the cache of pulled and unpacked rocks.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
    /// Write a commented profile to start from, `cairn.toml`, into the current folder.
    #[command(
        after_help = "Examples:\n  cairn init\n  cairn init --kubernetes worker --name edge-worker"
    )]
    Init {
        /// A Canonical Kubernetes node of this role instead of a plain node.
        #[arg(long, value_name = "ROLE", value_parser = ["control-plane", "worker"])]
        kubernetes: Option<String>,
        /// The profile's name [default: node, control-plane or worker].
        #[arg(long)]
        name: Option<String>,
        /// Replace an existing cairn.toml.
        #[arg(long)]
        force: bool,
    },
    /// Show what a build made: rocks, contents by rock, biggest files, packages, partitions, kernel and command line.
    Inspect {
        /// The build: OUT/NAME (its outputs' common prefix), its report or one of its outputs.
        build: PathBuf,
        /// JSON on stdout instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Compare two builds: rocks, files, packages, partitions. Exits 0 when they are the same, 1 when they
    /// differ, 2 on trouble (as diff(1)).
    Diff {
        a: PathBuf,
        b: PathBuf,
        /// JSON on stdout instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Boot a build's disk under QEMU (UEFI, no network out) until the node says ready or failed, then power it
    /// off. Exits 0 when it is ready, 1 when it failed or timed out. The disk is not written.
    #[command(
        after_help = "Examples:\n  cairn boot out/node                         # the build's raw (or qcow2) disk, checked against its report\n  cairn boot out/node --instance instance.toml --console out/console.log\n  cairn boot out/node --accel kvm --timeout 120   # on a runner with /dev/kvm\n  cairn boot --message-format json out/node | jq .boot.status.ready"
    )]
    Boot {
        /// The build: OUT/NAME, its report or one of its outputs; or any disk file (.raw, .qcow2).
        build: PathBuf,
        /// Instance data (TOML) for the agent, passed by QEMU's fw_cfg.
        #[arg(long, value_name = "FILE")]
        instance: Option<PathBuf>,
        /// Seconds to wait for the node's ready or failed line.
        #[arg(long, default_value_t = 600, value_name = "SECONDS")]
        timeout: u64,
        /// QEMU's accelerator.
        #[arg(long, value_enum, default_value = "tcg")]
        accel: AccelArg,
        /// The guest's memory, in MiB.
        #[arg(long, default_value_t = 1024, value_name = "MIB")]
        memory: u32,
        /// The guest's CPUs.
        #[arg(long, default_value_t = 2)]
        cpus: u32,
        /// Keep the whole serial console in this file.
        #[arg(long, value_name = "FILE")]
        console: Option<PathBuf>,
        /// Boot with Secure Boot on: OVMF's Secure Boot build and this variable store, with the image's
        /// certificate enrolled (made e.g. with virt-fw-vars; it is copied, never written).
        #[arg(long, value_name = "FILE")]
        secure_boot_vars: Option<PathBuf>,
    },
    /// Push a build's update payload (root, verity tree, unified kernel image, report) as one OCI artifact,
    /// and print REF@sha256:DIGEST, what nodes update from (`cairn-agent update`).
    #[command(
        after_help = "Examples:\n  cairn push cairn.toml registry.example/edge/node          # tagged with the profile's version\n  cairn push cairn.toml registry.example/edge/node:stable --out out\n  cairn push cairn.toml oci-layout:/media/usb/updates       # an OCI image layout, for removable media\n  cairn push --message-format json cairn.toml 127.0.0.1:5000/node | jq -r .push.reference"
    )]
    Push {
        /// The profile the build was made from: a build of any other is refused.
        profile: PathBuf,
        /// REGISTRY/REPO[:TAG] or oci-layout:DIR[:TAG]; the tag defaults to the profile's version.
        target: String,
        /// The folder `cairn build` wrote.
        #[arg(long, default_value = "out")]
        out: PathBuf,
    },
    /// Print a shell's completion script (e.g. `cairn completions bash > /etc/bash_completion.d/cairn`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page, in roff (e.g. `cairn man | man -l -`).
    Man,
}

#[derive(Subcommand)]
enum CacheAction {
    /// Show what the cache holds and the disk it uses.
    Du {
        /// Cache folder [default: $CAIRN_CACHE, $XDG_CACHE_HOME/cairn, ~/.cache/cairn].
        #[arg(long)]
        cache: Option<PathBuf>,
    },
    /// Remove everything the given profiles do not need, and what killed builds left. Waits for running builds.
    #[command(
        after_help = "Examples:\n  cairn cache prune --dry-run profiles/*.toml\n  cairn cache prune --all"
    )]
    Prune {
        /// Profiles whose rocks stay cached.
        profiles: Vec<PathBuf>,
        /// Keep nothing: empty the cache (instead of naming profiles).
        #[arg(long, conflicts_with = "profiles")]
        all: bool,
        /// Show what would be removed, and remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Cache folder [default: $CAIRN_CACHE, $XDG_CACHE_HOME/cairn, ~/.cache/cairn].
        #[arg(long)]
        cache: Option<PathBuf>,
    },
}

impl Command {
    /// The profile this command works on, if any: named in the advice of its errors.
    fn profile(&self) -> Option<&Path> {
        match self {
            Command::Validate { profile }
            | Command::Pin { profile, .. }
            | Command::Build { profile, .. }
            | Command::Push { profile, .. } => Some(profile),
            _ => None,
        }
    }
}

fn parse_enroll(s: &str) -> Result<cairn::disk::enroll::Enroll, String> {
    cairn::disk::enroll::Enroll::parse(s).ok_or_else(|| format!("`{s}`: off, manual or force"))
}

fn parse_format(s: &str) -> Result<Format, String> {
    Format::parse(s)
        .ok_or_else(|| format!("unknown format `{s}`: expected one of {}", Format::names()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let out = Out {
        json: cli.message_format == MessageFormat::Json,
    };
    if out.json {
        tracing_subscriber::fmt()
            .json()
            .with_writer(std::io::stderr)
            .with_target(false)
            .without_time()
            .with_env_filter(filter)
            .init();
    } else {
        // Live bars only for a person watching: a terminal, and not asked to be quiet.
        if !cli.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            cairn::progress::enable();
        }
        tracing_subscriber::fmt()
            .with_writer(cairn::progress::Stderr)
            .with_target(false)
            .without_time()
            .with_ansi(cli.color.on_stderr())
            .with_env_filter(filter)
            .init();
    }
    let cli_quiet = cli.quiet;
    let profile_arg = cli.command.profile().map(Path::to_path_buf);
    // `cairn diff` exits 1 when the builds differ, as diff(1).
    let mut differ = false;
    let result: Result<(), Error> = match cli.command {
        Command::Validate { profile } => match Profile::load(&profile) {
            Ok(p) => {
                let count =
                    |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
                let mut what = count(p.rocks().count(), "rock");
                if !p.preloads.is_empty() {
                    what.push_str(&format!(", {}", count(p.preloads.len(), "preloaded rock")));
                }
                if !p.snaps.is_empty() {
                    what.push_str(&format!(", {}", count(p.snaps.len(), "snap")));
                }
                if let Some(k) = &p.kubernetes {
                    what.push_str(&format!(
                        ", kubernetes {} hardened {}",
                        k.role.name(),
                        k.hardening.name()
                    ));
                }
                let warnings: Vec<String> = p
                    .placeholder_rocks()
                    .map(|r| {
                        format!(
                            "{}: the all-zero placeholder digest: run `cairn pin {}` against a registry that serves the rock",
                            r.label(),
                            profile.display()
                        )
                    })
                    .collect();
                if !out.json {
                    for w in &warnings {
                        eprintln!("cairn: warning: {w}");
                    }
                }
                out.result(
                    "validated",
                    || {
                        format!(
                            "{}: valid ({} {}, {what})\n",
                            profile.display(),
                            p.name,
                            p.version
                        )
                    },
                    json!({
                        "profile": profile,
                        "name": p.name,
                        "version": p.version,
                        "rocks": p.rocks().count(),
                        "preloads": p.preloads.len(),
                        "snaps": p.snaps.len(),
                        "kubernetes": p.kubernetes.as_ref().map(|k| json!({
                            "role": k.role.name(),
                            "hardening": k.hardening.name(),
                        })),
                        "warnings": warnings,
                    }),
                );
                Ok(())
            }
            Err(e) => Err(e.into()),
        },
        Command::Pin {
            profile,
            check,
            dry_run,
        } => {
            let mode = if check || dry_run {
                cairn::pin::Mode::Report
            } else {
                cairn::pin::Mode::Write
            };
            let verb = if mode == cairn::pin::Mode::Write {
                ""
            } else {
                "would change "
            };
            runtime()
                .and_then(|rt| Ok(rt.block_on(cairn::pin::pin(&profile, mode))?))
                .and_then(|changes| {
                    let stale = changes.iter().filter(|c| c.old != c.new).count();
                    out.result(
                        "pinned",
                        || {
                            let mut text = String::new();
                            for c in &changes {
                                if c.old == c.new {
                                    text.push_str(&format!("{}: unchanged {}\n", c.key, c.new));
                                } else {
                                    text.push_str(&format!(
                                        "{}: {verb}{}\n  -> {}\n",
                                        c.key, c.old, c.new
                                    ));
                                }
                            }
                            text
                        },
                        json!({
                            "profile": profile,
                            "written": mode == cairn::pin::Mode::Write,
                            "stale": stale,
                            "changes": changes.iter().map(|c| json!({
                                "key": c.key,
                                "old": c.old,
                                "new": c.new,
                                "changed": c.old != c.new,
                            })).collect::<Vec<_>>(),
                        }),
                    );
                    if check && stale > 0 {
                        return Err(Error::Stale {
                            profile: profile.clone(),
                            stale,
                        });
                    }
                    Ok(())
                })
        }
        Command::Build {
            profile,
            out: out_dir,
            formats,
            cache,
            agent,
            secure_boot_key,
            secure_boot_cert,
            secure_boot_sign_command,
            secure_boot_enroll,
        } => {
            let opts = BuildOptions {
                profile,
                out: out_dir,
                formats,
                cache,
                agent,
                secure_boot: cairn::disk::secure_boot::SecureBootOptions {
                    key: secure_boot_key,
                    cert: secure_boot_cert,
                    sign_command: secure_boot_sign_command,
                    enroll: secure_boot_enroll,
                },
            };
            runtime()
                .and_then(|rt| Ok(rt.block_on(cairn::build::build(&opts))?))
                .map(|built| {
                    out.result(
                        "built",
                        || cli::built(&built, &opts.out),
                        cli::built_json(&built, &opts.out),
                    )
                })
        }
        Command::Cache { action } => cache(action, out),
        Command::Init {
            kubernetes,
            name,
            force,
        } => {
            let kind = match kubernetes.as_deref() {
                Some("control-plane") => cairn::init::Kind::ControlPlane,
                Some(_) => cairn::init::Kind::Worker,
                None => cairn::init::Kind::Node,
            };
            cairn::init::write(Path::new("."), kind, name.as_deref(), force)
                .map(|path| {
                    out.result(
                        "initialized",
                        || {
                            format!(
                                "wrote {}: edit it, then `cairn pin {}` and `cairn build {}`\n",
                                path.display(),
                                cairn::init::FILE,
                                cairn::init::FILE
                            )
                        },
                        json!({ "profile": path }),
                    )
                })
                .map_err(Error::Init)
        }
        Command::Inspect { build, json } => cairn::inspect::inspect(&build)
            .map_err(Error::Inspect)
            .and_then(|i| {
                if out.json {
                    print_line(&cli::message("inspected", json!({ "inspection": i })))
                } else if json {
                    print_json(&i)
                } else {
                    print_text(&cairn::inspect::text::inspection(&i))
                }
            }),
        Command::Diff { a, b, json } => cairn::inspect::diff::diff(&a, &b)
            .map_err(Error::Diff)
            .and_then(|d| {
                differ = !d.same();
                if out.json {
                    print_line(&cli::message(
                        "diffed",
                        json!({ "same": d.same(), "diff": d }),
                    ))
                } else if json {
                    print_json(&d)
                } else {
                    print_text(&cairn::inspect::text::diff(&d))
                }
            }),
        Command::Boot {
            build,
            instance,
            timeout,
            accel,
            memory,
            cpus,
            console,
            secure_boot_vars,
        } => {
            let options = cairn::boot::Options {
                machine: cairn::boot::Machine {
                    instance,
                    accel: match accel {
                        AccelArg::Tcg => cairn::boot::Accel::Tcg,
                        AccelArg::Kvm => cairn::boot::Accel::Kvm,
                    },
                    memory_mib: memory,
                    cpus,
                    guest_forwards: Vec::new(),
                    secure_boot_vars,
                },
                timeout: std::time::Duration::from_secs(timeout),
                console,
            };
            cairn::boot::boot(&build, &options)
                .map_err(Error::Boot)
                .and_then(|b| boot_result(&b, out))
        }
        Command::Push {
            profile,
            target,
            out: out_dir,
        } => runtime()
            .and_then(|rt| Ok(rt.block_on(cairn::push::push(&profile, &target, &out_dir))?))
            .map(|pushed| {
                if !out.json && !cli_quiet {
                    cairn::progress::suspend(|| eprint!("{}", cli::pushed_parts(&pushed)));
                }
                out.result("pushed", || cli::pushed(&pushed), json!({ "push": pushed }))
            }),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "cairn", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map_err(Error::Output),
    };
    match result {
        Ok(()) if differ => ExitCode::from(1),
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = exit_code(&e);
            // The library cannot know how the profile was named on this command line; its advice can.
            let mut text = e.to_string();
            if let Some(p) = &profile_arg {
                text = text.replace("cairn pin PROFILE", &format!("cairn pin {}", p.display()));
            }
            if out.json {
                println!("{}", cli::message("error", error_json(&e, &text, code)));
            } else {
                cairn::progress::suspend(|| eprintln!("cairn: error: {text}"));
            }
            ExitCode::from(code)
        }
    }
}

/// A boot's result: on stdout, the node's verdict; a node that did not come up is an error (exit 1) besides.
fn boot_result(b: &cairn::boot::Booted, out: Out) -> Result<(), Error> {
    use cairn::boot::Outcome;
    out.result(
        "booted",
        || cli::booted(b),
        json!({ "ok": b.outcome == Outcome::Ready, "boot": b }),
    );
    if b.outcome == Outcome::Ready {
        return Ok(());
    }
    Err(Error::NotReady {
        disk: b.disk.display().to_string(),
        outcome: b.outcome.name(),
        seconds: b.seconds,
        note: b.note.clone().unwrap_or_default(),
    })
}

/// An error's JSON message: its text, exit code, and where in the profile when it points into one.
fn error_json(e: &Error, text: &str, code: u8) -> serde_json::Value {
    let diagnostic = match e {
        Error::Profile(p)
        | Error::Build(BuildError::Profile(p))
        | Error::Pin(PinError::Profile(p)) => p.diagnostic(),
        _ => None,
    };
    json!({
        "message": text,
        "exit_code": code,
        "bad_input": code == BAD_INPUT,
        "at": diagnostic.map(|d| json!({
            "file": d.file,
            "line": d.line,
            "column": d.column,
            "key": d.key,
            "message": d.message,
        })),
    })
}

/// Whole, with an error rather than print!'s panic when stdout is closed (`cairn inspect ... | head`).
fn print_text(text: &str) -> Result<(), Error> {
    std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()).map_err(Error::Output)
}

/// One JSON message on one line (`--message-format json`).
fn print_line(value: &serde_json::Value) -> Result<(), Error> {
    print_text(&format!("{value}\n"))
}

fn print_json(value: &impl serde::Serialize) -> Result<(), Error> {
    let mut text =
        serde_json::to_string_pretty(value).map_err(|e| Error::Output(std::io::Error::other(e)))?;
    text.push('\n');
    print_text(&text)
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)
}

fn cache(action: CacheAction, out: Out) -> Result<(), Error> {
    let row = |what: &str, a: maintain::Amount| {
        format!("{what:<22}{:>8}  {:>10}\n", a.count, human(a.bytes))
    };
    match action {
        CacheAction::Du { cache } => {
            let root = Cache::locate(cache.as_deref())?;
            let du = maintain::du(&root)?;
            out.result(
                "cache-usage",
                || {
                    let mut s = format!("cache: {}\n", root.display());
                    s += &row("blobs", du.blobs);
                    s += &row("unpacked layers", du.unpacked);
                    if du.stale.count > 0 {
                        s += &row("older-format layers", du.stale);
                    }
                    s += &row("running builds", du.running);
                    s += &row("left by killed builds", du.dead);
                    s += &format!("{:<22}{:>8}  {:>10}\n", "total", "", human(du.total()));
                    s
                },
                json!({ "cache": root, "usage": du, "total_bytes": du.total() }),
            );
        }
        CacheAction::Prune {
            profiles,
            all,
            dry_run,
            cache,
        } => {
            if profiles.is_empty() && !all {
                return Err(Error::Usage(
                    "name the profiles whose rocks to keep, or pass --all to empty the cache"
                        .into(),
                ));
            }
            let root = Cache::locate(cache.as_deref())?;
            let loaded = profiles
                .into_iter()
                .map(|p| Profile::load(&p).map(|l| (p, l)))
                .collect::<Result<Vec<_>, _>>()?;
            let needed = maintain::needed(&root, &loaded);
            if !out.json {
                for key in &needed.unpinned {
                    eprintln!("cairn: warning: {key} has no digest: nothing cached is kept for it");
                }
            }
            let pruned = maintain::prune(&root, &needed.blobs, dry_run)?;
            let verb = if dry_run { "would remove" } else { "removed" };
            out.result(
                "cache-pruned",
                || {
                    let mut s = format!("cache: {}\n", root.display());
                    s += &row(&format!("{verb} blobs"), pruned.blobs);
                    s += &row(&format!("{verb} layers"), pruned.unpacked);
                    s += &row(&format!("{verb} debris"), pruned.debris);
                    s += &row("kept", pruned.kept);
                    s
                },
                json!({
                    "cache": root,
                    "dry_run": dry_run,
                    "removed": pruned,
                    "unpinned": needed.unpinned,
                }),
            );
        }
    }
    Ok(())
}
