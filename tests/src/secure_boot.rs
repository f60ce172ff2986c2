//! Secure Boot keys as a user makes them (openssl), and the `cairn build` options that sign with them.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::rocks::run;

/// A key and its certificate, PEM files.
pub type KeyPair = (PathBuf, PathBuf);

/// An RSA-2048 key and its self-signed certificate (`CN=cairn test NAME`), in `dir`.
pub fn key_pair(dir: &Path, name: &str) -> KeyPair {
    let (key, cert) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.crt")),
    );
    run(Command::new("openssl")
        .args([
            "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
        ])
        .args(["-days", "3650", "-subj", &format!("/CN=cairn test {name}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    (key, cert)
}

/// The certificate as DER.
pub fn der(cert: &Path) -> Vec<u8> {
    run(Command::new("openssl")
        .args(["x509", "-outform", "der", "-in"])
        .arg(cert))
}

/// `--secure-boot-key KEY --secure-boot-cert CERT`, for `cairn build`'s arguments.
pub fn sign_args(pair: &KeyPair) -> [&OsStr; 4] {
    [
        OsStr::new("--secure-boot-key"),
        pair.0.as_os_str(),
        OsStr::new("--secure-boot-cert"),
        pair.1.as_os_str(),
    ]
}
