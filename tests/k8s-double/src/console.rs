//! Where the double reports what it received: `/dev/console` inside the booted VM (the serial log a test greps),
//! else stderr; `K8S_DOUBLE_CONSOLE=PATH` (appended to) overrides, for host tests.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

/// `O_NOCTTY` on x86_64 and aarch64 Linux: opening the console must not make it our controlling terminal.
const O_NOCTTY: i32 = 0o400;

pub const PREFIX: &str = "k8s-double: ";

pub struct Console {
    out: Box<dyn Write>,
}

impl Console {
    pub fn open() -> Console {
        if let Some(path) = std::env::var_os("K8S_DOUBLE_CONSOLE") {
            match OpenOptions::new().create(true).append(true).open(&path) {
                Ok(f) => return Console { out: Box::new(f) },
                Err(e) => eprintln!(
                    "{PREFIX}cannot open K8S_DOUBLE_CONSOLE={}: {e}; using stderr",
                    std::path::Path::new(&path).display()
                ),
            }
        }
        match OpenOptions::new()
            .write(true)
            .custom_flags(O_NOCTTY)
            .open("/dev/console")
        {
            Ok(f) => Console { out: Box::new(f) },
            Err(_) => Console {
                out: Box::new(std::io::stderr()),
            },
        }
    }

    /// Writes each line of `text` prefixed, one `write` per line so lines of other writers do not cut into it.
    /// A console that fails is not a reason to fail the command.
    pub fn line(&mut self, text: &str) {
        for l in text.lines() {
            let _ = self.out.write_all(format!("{PREFIX}{l}\n").as_bytes());
        }
        let _ = self.out.flush();
    }
}
