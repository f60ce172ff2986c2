//! Unpacks one layer blob into a scratch cache and prints its entry count and the process's peak RSS: the
//! figures of builder/README.md's "Limits" section come from this.
//!
//! `cargo run --release -p cairn --example unpack_layer -- BLOB gzip|zstd|none [DIFF_ID]`; without a diff_id the
//! tar's digest is computed first (in a separate pass that holds nothing), so a legit layer checks out.

use std::io::Read;
use std::path::PathBuf;

use cairn::assemble::layer;
use cairn::cache::Cache;
use cairn::resolve::{Compression, Layer};
use cairn_profile::Digest;
use sha2::{Digest as _, Sha256};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let blob = PathBuf::from(
        args.next()
            .ok_or("usage: unpack_layer BLOB gzip|zstd|none [DIFF_ID]")?,
    );
    let compression = match args.next().as_deref() {
        Some("gzip") => Compression::Gzip,
        Some("zstd") => Compression::Zstd,
        Some("none") => Compression::None,
        _ => return Err("compression: gzip, zstd or none".into()),
    };
    let digest = Digest::from_sha256(&hash(std::fs::File::open(&blob)?)?);
    let diff_id = match args.next() {
        Some(d) => Digest::parse(&d)?,
        None => {
            let file = std::io::BufReader::new(std::fs::File::open(&blob)?);
            let plain: Box<dyn Read> = match compression {
                Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(file)),
                Compression::Zstd => Box::new(zstd::Decoder::with_buffer(file)?),
                Compression::None => Box::new(file),
            };
            Digest::from_sha256(&hash(plain)?)
        }
    };
    let scratch = tempfile::tempdir()?;
    let cache = Cache::open(scratch.path().to_path_buf())?;
    let layer = Layer {
        digest,
        size: std::fs::metadata(&blob)?.len(),
        media_type: String::new(),
        compression,
        diff_id,
    };
    let result = layer::unpack(&cache, &layer, &blob);
    match &result {
        Ok(u) => {
            let index = std::fs::File::open(cache.unpacked_dir(&layer.digest).join("index.json"))?;
            let index = Digest::from_sha256(&hash(index)?);
            println!("unpacked: {} entries, index {index}", u.entries.len());
        }
        Err(e) => println!("refused: {e}"),
    }
    let status = std::fs::read_to_string("/proc/self/status")?;
    for line in status.lines().filter(|l| l.starts_with("VmHWM")) {
        println!("{line}");
    }
    Ok(())
}

fn hash(mut r: impl Read) -> std::io::Result<Vec<u8>> {
    let mut h = Sha256::new();
    let mut buf = vec![0; 1 << 16];
    loop {
        match r.read(&mut buf)? {
            0 => return Ok(h.finalize().to_vec()),
            n => h.update(&buf[..n]),
        }
    }
}
