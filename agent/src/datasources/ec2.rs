//! EC2 instance metadata (source 4), IMDSv2 only.
//!
//! Considered when `imds_endpoint` is set (forced at that address: tests), when the command line says
//! `cairn.datasource=ec2`, or when DMI says the machine is on EC2 ([`on_ec2`]); the endpoint is then
//! `imds_endpoint`, else [`DEFAULT_IMDS_ENDPOINT`]. Detection reads DMI only and sends nothing.
//!
//! Fetching: `PUT {endpoint}/latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds: 300`; the body is the
//! session token. Then `GET {endpoint}/latest/user-data` with `X-aws-ec2-metadata-token: TOKEN`.
//! - IMDSv1 is never used: if the PUT does not give a token (any status but 200 — an IMDSv1-only service
//!   answers 403, 404 or 405 —, or a body that is not one token of visible ASCII), the source fails saying so
//!   and no GET is sent. Connection errors and `5xx` are retried by the HTTP client first.
//! - user-data `200`: its body is the instance data; `404`: the machine has no user data, the source is
//!   present with an empty document; anything else is an error.
//! - The endpoint must be `http://host[:port]` (no path): the metadata service speaks plain HTTP, on a
//!   link-local address; any host is allowed here since only the operator (or DMI) chooses this source.

use std::fs;
use std::path::Path;

use cairn_profile::contract::DATASOURCE_KEY;

use super::cmdline::cmdline_value;
use super::http::{self, Method, Scheme, Url};
use super::{
    Config, DEFAULT_IMDS_ENDPOINT, DatasourceError, Found, NetworkSource, SourceKind, to_text,
};

const TOKEN_PATH: &str = "/latest/api/token";
const USER_DATA_PATH: &str = "/latest/user-data";
const TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
/// The session token's lifetime asked for, in seconds.
const TOKEN_TTL: &str = "300";

pub(super) fn name(endpoint: &str) -> String {
    format!("ec2 {endpoint}")
}

/// Whether the command line asks for the EC2 source (`cairn.datasource=ec2`); an error for any other value.
pub(super) fn asked_on_cmdline(cmdline: &str) -> Result<bool, DatasourceError> {
    match cmdline_value(cmdline, DATASOURCE_KEY).as_deref() {
        None => Ok(false),
        Some("ec2") => Ok(true),
        Some(other) => Err(DatasourceError::new(
            format!("{DATASOURCE_KEY}={other}"),
            "unknown datasource (the only one that can be asked for is ec2)",
        )),
    }
}

/// Whether DMI says this machine is an EC2 instance: `sys_vendor` is `Amazon EC2` (Nitro), `board_asset_tag`
/// is an instance id (`i-` and 8 or 17 hex digits), or `product_name`, `bios_vendor` or `bios_version` contain
/// `amazon`, in any case (Xen instances: `bios_version` like `4.11.amazon`). Missing or unreadable files say
/// nothing.
pub fn on_ec2(dmi_dir: &Path) -> bool {
    let read = |file: &str| {
        fs::read(dmi_dir.join(file))
            .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_string())
            .unwrap_or_default()
    };
    let instance_id = |tag: &str| {
        tag.strip_prefix("i-").is_some_and(|hex| {
            (hex.len() == 8 || hex.len() == 17) && hex.bytes().all(|b| b.is_ascii_hexdigit())
        })
    };
    read("sys_vendor") == "Amazon EC2"
        || instance_id(&read("board_asset_tag"))
        || ["product_name", "bios_vendor", "bios_version"]
            .iter()
            .any(|file| read(file).to_ascii_lowercase().contains("amazon"))
}

pub(super) fn detect(cfg: &Config, asked: bool) -> Result<Option<NetworkSource>, DatasourceError> {
    if let Some(endpoint) = &cfg.imds_endpoint {
        let endpoint = endpoint_url(endpoint)?.0;
        return Ok(Some(NetworkSource::Ec2 { endpoint }));
    }
    if asked || on_ec2(&cfg.dmi_dir) {
        return Ok(Some(NetworkSource::Ec2 {
            endpoint: DEFAULT_IMDS_ENDPOINT.to_string(),
        }));
    }
    Ok(None)
}

/// The endpoint normalized (`http://host[:port]`, no trailing slash), and parsed.
fn endpoint_url(endpoint: &str) -> Result<(String, Url), DatasourceError> {
    let fail = |message: String| DatasourceError::new(name(endpoint), message);
    let url = Url::parse(endpoint)
        .map_err(|e| fail(format!("not a metadata endpoint (http://host[:port]): {e}")))?;
    if url.scheme != Scheme::Http {
        return Err(fail(
            "not a metadata endpoint (http://host[:port]): the metadata service speaks plain http"
                .to_string(),
        ));
    }
    if url.target != "/" {
        return Err(fail(
            "a metadata endpoint is http://host[:port], without a path".to_string(),
        ));
    }
    let normalized = url.to_string().trim_end_matches('/').to_string();
    Ok((normalized, url))
}

/// A token this client can send back: one word of visible ASCII.
fn token(body: &[u8]) -> Option<&str> {
    let token = std::str::from_utf8(body).ok()?.trim();
    let valid =
        !token.is_empty() && token.len() <= 4096 && token.bytes().all(|b| b.is_ascii_graphic());
    valid.then_some(token)
}

/// The network phase for source 4.
pub(super) fn fetch(endpoint: &str, cfg: &Config) -> Result<Found, DatasourceError> {
    let (endpoint, base) = endpoint_url(endpoint)?;
    let name = name(&endpoint);
    let fail = |message: String| DatasourceError::new(&name, message);
    let policy = cfg.http_policy();
    let no_token = |why: String| {
        fail(format!(
            "the metadata service did not give an IMDSv2 token (PUT {TOKEN_PATH}: {why}); IMDSv1 is refused"
        ))
    };

    let token_url = Url {
        target: TOKEN_PATH.to_string(),
        ..base.clone()
    };
    let response = http::request(Method::Put, &token_url, &[(TTL_HEADER, TOKEN_TTL)], &policy)
        .map_err(|e| match e {
            http::HttpError::Io { .. } => fail(format!("PUT {TOKEN_PATH}: {e}")),
            _ => no_token(e.to_string()),
        })?;
    if response.status != 200 {
        return Err(no_token(format!("HTTP {}", response.status_text())));
    }
    let Some(token) = token(&response.body) else {
        return Err(no_token("HTTP 200 without a token in the body".to_string()));
    };

    let user_data_url = Url {
        target: USER_DATA_PATH.to_string(),
        ..base
    };
    let response = http::request(
        Method::Get,
        &user_data_url,
        &[(TOKEN_HEADER, token)],
        &policy,
    )
    .map_err(|e| fail(format!("GET {USER_DATA_PATH}: {e}")))?;
    let text = match response.status {
        200 => to_text(response.body, &name)?,
        // No user data for this instance: nothing to add.
        404 => String::new(),
        401 => {
            return Err(fail(format!(
                "GET {USER_DATA_PATH}: HTTP {} (the session token was refused)",
                response.status_text()
            )));
        }
        _ => {
            return Err(fail(format!(
                "GET {USER_DATA_PATH}: HTTP {}",
                response.status_text()
            )));
        }
    };
    Ok(Found {
        source: SourceKind::Ec2,
        name,
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::TempDir;
    use super::*;

    fn dmi(files: &[(&str, &str)]) -> (TempDir, Config) {
        let tmp = TempDir::new();
        let mut cfg = Config::for_root(tmp.path());
        cfg.dmi_dir = tmp.path().join("dmi");
        fs::create_dir_all(&cfg.dmi_dir).unwrap();
        for (file, value) in files {
            fs::write(cfg.dmi_dir.join(file), format!("{value}\n")).unwrap();
        }
        (tmp, cfg)
    }

    #[test]
    fn dmi_says_ec2() {
        for files in [
            &[("sys_vendor", "Amazon EC2")][..],
            &[("board_asset_tag", "i-0123456789abcdef0")],
            &[("board_asset_tag", "i-0123abcd")],
            &[("product_name", "Amazon EC2 m5.large")],
            &[("bios_vendor", "Amazon EC2")],
            &[("sys_vendor", "Xen"), ("bios_version", "4.11.amazon")],
        ] {
            let (_tmp, cfg) = dmi(files);
            assert!(on_ec2(&cfg.dmi_dir), "{files:?}");
            assert_eq!(
                detect(&cfg, false).unwrap(),
                Some(NetworkSource::Ec2 {
                    endpoint: "http://169.254.169.254".into()
                })
            );
        }
        for files in [
            &[][..],
            &[
                ("sys_vendor", "QEMU"),
                ("product_name", "Standard PC (Q35 + ICH9, 2009)"),
            ],
            &[("board_asset_tag", "i-am-a-label")],
            &[("sys_vendor", "Amazon EC2 clone")],
        ] {
            let (_tmp, cfg) = dmi(files);
            assert!(!on_ec2(&cfg.dmi_dir), "{files:?}");
            assert_eq!(detect(&cfg, false).unwrap(), None);
        }
        assert!(!on_ec2(Path::new("/nonexistent/dmi")));
    }

    #[test]
    fn asked_or_forced() {
        let (_tmp, mut cfg) = dmi(&[]);
        assert_eq!(
            detect(&cfg, true).unwrap(),
            Some(NetworkSource::Ec2 {
                endpoint: DEFAULT_IMDS_ENDPOINT.into()
            })
        );
        cfg.imds_endpoint = Some("http://127.0.0.1:8080/".into());
        assert_eq!(
            detect(&cfg, false).unwrap(),
            Some(NetworkSource::Ec2 {
                endpoint: "http://127.0.0.1:8080".into()
            })
        );
        cfg.imds_endpoint = Some("http://[::1]:80".into());
        assert_eq!(
            detect(&cfg, false).unwrap(),
            Some(NetworkSource::Ec2 {
                endpoint: "http://[::1]".into()
            })
        );
        for bad in [
            "http://127.0.0.1:8080/latest",
            "https://127.0.0.1",
            "127.0.0.1",
        ] {
            cfg.imds_endpoint = Some(bad.into());
            let e = detect(&cfg, false).unwrap_err();
            assert_eq!(e.source, format!("ec2 {bad}"));
        }
    }

    #[test]
    fn the_datasource_key() {
        assert!(!asked_on_cmdline("quiet").unwrap());
        assert!(asked_on_cmdline("quiet cairn.datasource=ec2").unwrap());
        assert_eq!(
            asked_on_cmdline("cairn.datasource=gce")
                .unwrap_err()
                .to_string(),
            "cairn.datasource=gce: unknown datasource (the only one that can be asked for is ec2)"
        );
        assert!(asked_on_cmdline("cairn.datasource").is_err());
    }

    #[test]
    fn tokens() {
        assert_eq!(token(b"AQAEAJ-x_y==\n"), Some("AQAEAJ-x_y=="));
        assert_eq!(token(b""), None);
        assert_eq!(token(b"  \n"), None);
        assert_eq!(token(b"<html>Forbidden</html> x"), None);
        assert_eq!(token(b"a\r\nX-Injected: 1"), None);
        assert_eq!(token(b"\xff"), None);
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;
    use crate::proptest_support::config;

    proptest! {
        #![proptest_config(config(256))]

        #[test]
        fn a_token_is_one_word_of_visible_ascii(body in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Some(t) = token(&body) {
                prop_assert!(!t.is_empty() && t.len() <= 4096);
                prop_assert!(t.bytes().all(|b| b.is_ascii_graphic()), "{t:?}");
                // The body is the token and whitespace around it.
                let text = std::str::from_utf8(&body).unwrap();
                prop_assert_eq!(text.trim(), t);
            }
        }

        #[test]
        fn generated_tokens_are_taken(
            t in "[!-~]{1,64}",
            before in "[ \t\r\n]{0,3}",
            after in "[ \t\r\n]{0,3}",
        ) {
            let body = format!("{before}{t}{after}");
            prop_assert_eq!(token(body.as_bytes()), Some(t.as_str()));
        }

        #[test]
        fn a_token_with_anything_else_inside_is_refused(
            a in "[!-~]{1,8}",
            b in "[!-~]{1,8}",
            bad in prop_oneof![any::<u8>().prop_filter("visible", |b| !b.is_ascii_graphic()).prop_map(|b| vec![b]),
                Just(b"\xC3\xA9".to_vec())],
            long in 4097..5000usize,
        ) {
            let mut body = a.into_bytes();
            body.extend(bad);
            body.extend(b.into_bytes());
            prop_assert_eq!(token(&body), None, "{:?}", body);
            let too_long = vec![b'x'; long];
            prop_assert_eq!(token(&too_long), None);
            prop_assert!(token(&too_long[..4096]).is_some());
        }
    }
}
