//! Site files: the few settings a field team may give one site (address,
//! gateway, host name, closing listed ingress ports, named service
//! environment variables) without a new build.
//! The recipe's `[site]` table declares which ones (`SiteDeclaration`); a
//! site file is checked against it here, with `file:line:col` for every
//! problem, by `cairn site sign`, `cairn site apply` and `cairn flash`.
//!
//! Invariant: a site file that passes `check` is also one the initramfs'
//! parser (guest/site.awk) reads the same way: plain `key = "value"` or
//! `key = ["a", "b"]` lines (dotted keys for `env.SERVICE.VAR`), comments
//! and blank lines, nothing else.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::recipe::network::{parse_address, parse_ingress};
use crate::recipe::{line_col, RecipeError, RecipeProblem};

/// The settings a site file may carry, with what each does; the recipe's
/// `[site] allow` names a subset.
pub const SITE_SETTINGS: &[(&str, &str)] = &[
    (
        "address",
        "the static IPv4 address with prefix (`\"10.1.4.20/24\"`), replacing `[network] address`",
    ),
    (
        "gateway",
        "the IPv4 default gateway, replacing `[network] gateway`",
    ),
    (
        "hostname",
        "the host name (`[a-z0-9-]`, 1-63, no dots: there is no DNS), replacing the image name",
    ),
    (
        "close_ingress",
        "a list of the recipe's `[network] ingress` ports this site closes (`[\"8080/tcp\"]`)",
    ),
    (
        "env.SERVICE.VAR",
        "the value of the environment variable `VAR` of the `[[services]]` entry `SERVICE` \
         (`env.inference.SITE_LABEL = \"north\"`), replacing the recipe's default (the service's \
         `env` must set `VAR`); one entry per variable a site may set",
    ),
    (
        "role",
        "the node's role in the cluster, `\"server\"` or `\"agent\"` (one of the recipe's \
         `[cluster] roles`; default server)",
    ),
    (
        "server",
        "the server node's IPv4 address, without prefix (`\"10.1.4.20\"`): where an agent joins",
    ),
    (
        "join_token",
        "the bootstrap token an agent joins with (`id.secret`, `[a-z0-9]{6}.[a-z0-9]{16}`; \
         `cairn site token` makes one); needs `join_expires`",
    ),
    (
        "join_expires",
        "when `join_token` stops working, RFC 3339 UTC (`\"2027-01-31T00:00:00Z\"`)",
    ),
    (
        "peers",
        "every node of the cluster, IPv4 addresses without prefix (1 to 16, no duplicates; \
         the same list in every site file of the cluster)",
    ),
];

/// The settings of a cluster node: a recipe may allow them only with
/// `[cluster] runtime = "kubernetes"` or `"k3s"`.
pub const CLUSTER_SETTINGS: &[&str] = &["role", "server", "join_token", "join_expires", "peers"];

/// The roles a node may take; `[cluster] roles` names a subset.
pub const ROLES: &[&str] = &["server", "agent"];

/// At most this many `peers` (the firewall opens the cluster's ports to each).
pub const MAX_PEERS: usize = 16;

/// `[cluster] roles` when the recipe names none (and in manifests from
/// before roles).
pub fn default_roles() -> Vec<String> {
    vec!["server".into()]
}

/// `[a-z0-9]{6}\.[a-z0-9]{16}`: a Kubernetes bootstrap token (id.secret).
pub fn is_join_token(t: &str) -> bool {
    let ok = |p: &str, n: usize| {
        p.len() == n
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    };
    t.split_once('.')
        .is_some_and(|(id, secret)| ok(id, 6) && ok(secret, 16))
}

/// Seconds since 1970 of `YYYY-MM-DDTHH:MM:SSZ` (exactly that form: month
/// 1-12, day 1-31, hour below 24, minutes and seconds below 60, as
/// guest/site.awk checks), or None.
pub fn join_expires_epoch(v: &str) -> Option<u64> {
    let b = v.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<u64> {
        b.get(r.clone())
            .filter(|d| d.iter().all(u8::is_ascii_digit))
            .and_then(|_| v[r].parse().ok())
    };
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let (y, mo, d) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (h, mi, s) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h >= 24 || mi >= 60 || s >= 60 {
        return None;
    }
    // Days since 1970 of the civil date (Howard Hinnant's days_from_civil).
    let y = if mo <= 2 { y as i64 - 1 } else { y as i64 };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (mo as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    Some(days * 86_400 + h * 3600 + mi * 60 + s)
}

/// Why a site file's `join_expires` is no use at `now` (seconds since
/// 1970), if it is not: `cairn site sign` refuses a token already expired.
pub fn expired_problem(expires: &str, now: u64) -> Option<String> {
    match join_expires_epoch(expires) {
        Some(t) if t <= now => Some(format!(
            "join_expires {expires:?} is in the past ({} now); an agent could not join with this token: make a new one (cairn site token) and sign again",
            crate::host::time::rfc3339(now)
        )),
        _ => None,
    }
}

/// The problem of a site file (already checked) whose `join_expires` is
/// past at `now`, at its value: `cairn site sign` refuses it.
pub fn expiry_problem(file: &Path, text: &str, now: u64) -> Option<RecipeError> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim() != "join_expires" || line.trim_start().starts_with('#') {
            continue;
        }
        let v = value.trim().trim_matches('"');
        let m = expired_problem(v, now)?;
        let at = start + key.len() + 1 + (value.len() - value.trim_start().len());
        return Some(RecipeError {
            problems: vec![problem(file, text, at, m)],
        });
    }
    None
}

/// A fresh bootstrap token from `next` (a source of random bytes): 22
/// characters of `[a-z0-9]`, each from a byte below 252 (= 7 * 36, so every
/// character is equally likely), with the `.` after the sixth.
pub fn token_from(mut next: impl FnMut() -> u8) -> String {
    const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(23);
    while out.len() < 23 {
        if out.len() == 6 {
            out.push('.');
            continue;
        }
        let b = next();
        if b < 252 {
            out.push(ALPHABET[usize::from(b % 36)] as char);
        }
    }
    out
}

/// The two lines `cairn site token` prints: `token` and an expiry `days`
/// after `now`, ready to paste into site files.
pub fn token_lines(token: &str, now: u64, days: u32) -> String {
    let expires = crate::host::time::rfc3339(now + u64::from(days) * 86_400);
    format!("join_token = \"{token}\"\njoin_expires = \"{expires}\"\n")
}

/// The `(service, variable)` an `env.SERVICE.VAR` setting names, if `k` is
/// one (`SERVICE` a name, `VAR` a portable environment variable name).
pub fn env_setting(k: &str) -> Option<(&str, &str)> {
    let rest = k.strip_prefix("env.")?;
    let (service, var) = rest.split_once('.')?;
    (is_site_name(service) && is_env_name(var)).then_some((service, var))
}

/// `[A-Za-z_][A-Za-z0-9_]*`: what a shell, systemd and ctr all take.
pub fn is_env_name(v: &str) -> bool {
    v.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && v.len() <= 128
        && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Why a variable named `v` must not be set by a site, if it must not: a
/// name that steers a shell, the dynamic loader, libc, systemd or
/// containerd rather than the service (the service's own settings are
/// plain upper-case names). Values reach only the container, but a
/// signed site file is not the place to redirect its loader or trust
/// anchors either. guest/site.awk refuses the same list.
pub fn host_steering_name(v: &str) -> Option<&'static str> {
    let plain = !v.is_empty()
        && v.starts_with(|c: char| c.is_ascii_uppercase() || c == '_')
        && v.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if !plain {
        return Some("is not an upper-case name ([A-Z_][A-Z0-9_]*)");
    }
    const PREFIXES: &[(&str, &str)] = &[
        ("LD_", "steers the dynamic loader"),
        ("MALLOC_", "steers libc's allocator"),
        ("GLIBC_", "steers libc (tunables)"),
        ("GCONV_", "makes libc load modules"),
        ("LOCPATH", "makes libc load locale files"),
        ("NLSPATH", "makes libc load message catalogues"),
        ("TZDIR", "makes libc read time zone files from elsewhere"),
        ("SYSTEMD_", "steers systemd's tools"),
        ("DBUS_", "steers D-Bus clients"),
        ("CONTAINERD_", "steers containerd and ctr"),
        ("CTR_", "steers ctr"),
        ("XDG_", "steers where programs read configuration"),
        (
            "PYTHON",
            "steers the Python interpreter (PYTHONPATH, PYTHONSTARTUP)",
        ),
        ("PERL", "steers the Perl interpreter (PERL5LIB, PERL5OPT)"),
        ("RUBY", "steers the Ruby interpreter (RUBYOPT, RUBYLIB)"),
        ("NODE_", "steers Node.js (NODE_OPTIONS)"),
        ("JAVA_TOOL", "makes the JVM load agents (JAVA_TOOL_OPTIONS)"),
        ("BASH_FUNC_", "defines shell functions"),
    ];
    const NAMES: &[(&str, &str)] = &[
        ("PATH", "chooses which programs run"),
        ("HOME", "steers where shells and tools read configuration"),
        ("SHELL", "chooses the shell"),
        ("IFS", "changes how a shell splits words"),
        ("ENV", "makes a shell run a file"),
        ("BASH_ENV", "makes bash run a file"),
        ("CDPATH", "steers a shell's cd"),
        ("PS1", "is run through a shell's expansions"),
        ("PS2", "is run through a shell's expansions"),
        ("PS4", "is run through a shell's expansions"),
        ("SHELLOPTS", "sets shell options"),
        ("BASHOPTS", "sets shell options"),
        ("POSIXLY_CORRECT", "changes how tools parse arguments"),
        ("HOSTALIASES", "makes the resolver read a file"),
        ("RES_OPTIONS", "steers the resolver"),
        ("LOCALDOMAIN", "steers the resolver"),
        ("TMPDIR", "steers where tools write temporary files"),
        ("NOTIFY_SOCKET", "talks to systemd"),
        ("LISTEN_FDS", "hands file descriptors over (systemd)"),
        ("LISTEN_PID", "hands file descriptors over (systemd)"),
        ("SSL_CERT_FILE", "replaces the trusted certificates"),
        ("SSL_CERT_DIR", "replaces the trusted certificates"),
    ];
    PREFIXES
        .iter()
        .find(|(p, _)| v.starts_with(p))
        .or_else(|| NAMES.iter().find(|(n, _)| v == *n))
        .map(|(_, why)| *why)
}

/// Why `v` cannot be a site-settable variable's value, if it cannot: it
/// lands double-quoted in a systemd environment file, so no quotes,
/// backslashes, `$`, backticks or `%`, no control characters, no space at
/// either end (the initramfs' reader trims them), at most 1024 bytes.
pub fn env_value_problem(v: &str) -> Option<String> {
    if v.len() > 1024 {
        return Some(format!("is {} bytes; at most 1024", v.len()));
    }
    if let Some(c) = v.chars().find(|c| "\"\\$`%".contains(*c) || c.is_control()) {
        return Some(format!(
            "holds {c:?}; environment values a site sets have no quotes, backslashes, `$`, backticks, `%` or control characters"
        ));
    }
    if v.starts_with(' ') || v.ends_with(' ') {
        return Some("starts or ends with a space; remove it".into());
    }
    None
}

/// What a recipe lets a site file set, and the key that signs site files.
/// Compiled into the image (initramfs) and recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteDeclaration {
    /// Names from `SITE_SETTINGS` (`env.SERVICE.VAR` spelled out), sorted.
    pub allow: Vec<String>,
    /// The recipe's ingress ports (`"8080/tcp"`): what `close_ingress` may name.
    pub ingress: Vec<String>,
    /// The signify public key's key number, hex.
    pub key_id: String,
    /// The `.pub` file's text (comment line and key line).
    pub public_key: String,
    /// Where the recipe names the key (not recorded in the manifest: a
    /// host path).
    #[serde(skip)]
    pub key_path: PathBuf,
    /// `[site] required`: the image halts at boot without a site file
    /// (closing a port or setting an address cannot be undone by deleting
    /// the file).
    #[serde(default)]
    pub required: bool,
    /// `[site] min_serial`: the lowest `serial` a site file may carry; raise
    /// it in a new release to retire older site files.
    #[serde(default)]
    pub min_serial: u64,
    /// `[image] name` and `version`: a site file names the image (and a
    /// version, or a prefix of versions ending in `*`) it is for.
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub version: String,
    /// `[cluster] roles`: the roles a site file's `role` may name, in the
    /// recipe's order (manifests from before roles: server only).
    #[serde(default = "default_roles")]
    pub roles: Vec<String>,
}

impl SiteDeclaration {
    /// The initramfs' `/etc/cairn/site.bind`, read by guest/site.awk and
    /// the init: `image NAME`, `version V`, `min_serial N`, `required 0|1`,
    /// `roles server agent` (the recipe's `[cluster] roles`, in order).
    pub fn bind_text(&self) -> String {
        format!(
            "image {}\nversion {}\nmin_serial {}\nrequired {}\nroles {}\n",
            self.image,
            self.version,
            self.min_serial,
            u8::from(self.required),
            self.roles.join(" ")
        )
    }

    /// The variables of `service` a site may set, sorted.
    pub fn env_vars(&self, service: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .allow
            .iter()
            .filter_map(|a| env_setting(a))
            .filter(|(s, _)| *s == service)
            .map(|(_, v)| v.to_string())
            .collect();
        v.sort();
        v
    }
}

/// The key id (signify key number, hex) of a signify `.pub` file's text,
/// or why the text is not one.
pub fn public_key_id(text: &str) -> Result<String, String> {
    use base64::Engine;
    let mut lines = text.lines();
    let comment = lines.next().unwrap_or("");
    if !comment.starts_with("untrusted comment: ") {
        return Err("is not a signify public key (no `untrusted comment:` line); make one with `cairn keygen sites`".into());
    }
    let blob = lines
        .next()
        .and_then(|l| {
            base64::engine::general_purpose::STANDARD
                .decode(l.trim())
                .ok()
        })
        .ok_or("is not a signify public key (its second line is not base64)")?;
    if blob.len() != 42 || &blob[..2] != b"Ed" {
        return Err(
            "is not a signify Ed25519 public key (a secret key or a signature?); give the .pub file"
                .into(),
        );
    }
    Ok(hex::encode(&blob[2..10]))
}

/// A site file as serde reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteFileToml {
    name: Spanned<String>,
    image: Option<Spanned<String>>,
    version: Option<Spanned<String>>,
    serial: Option<Spanned<String>>,
    address: Option<Spanned<String>>,
    gateway: Option<Spanned<String>>,
    hostname: Option<Spanned<String>>,
    close_ingress: Option<Spanned<Vec<Spanned<String>>>>,
    /// `env.SERVICE.VAR = "value"` (dotted keys).
    env: Option<BTreeMap<String, BTreeMap<String, Spanned<String>>>>,
    role: Option<Spanned<String>>,
    server: Option<Spanned<String>>,
    join_token: Option<Spanned<String>>,
    join_expires: Option<Spanned<String>>,
    peers: Option<Spanned<Vec<Spanned<String>>>>,
}

/// A checked site file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SiteSettings {
    pub name: String,
    /// The image, version (or `PREFIX*`) and serial the file names.
    pub image: String,
    pub version: String,
    pub serial: u64,
    pub address: Option<String>,
    pub gateway: Option<String>,
    pub hostname: Option<String>,
    pub close_ingress: Vec<String>,
    /// `(service, variable, value)`, sorted by service and variable.
    pub env: Vec<(String, String, String)>,
    /// The cluster node's settings (`role`: None means server).
    pub role: Option<String>,
    pub server: Option<String>,
    pub join_token: Option<String>,
    pub join_expires: Option<String>,
    pub peers: Vec<String>,
}

impl SiteSettings {
    /// The node's role: the file's `role`, else server.
    pub fn role(&self) -> &str {
        self.role.as_deref().unwrap_or("server")
    }
}

/// Whether `v` is a plain IPv4 address (dotted quad, no prefix, no
/// leading zeros: one spelling per address, so lists compare as text).
pub fn is_plain_ipv4(v: &str) -> bool {
    v.parse::<std::net::Ipv4Addr>().is_ok()
}

/// Whether `h` is a plain host name label: `[a-z0-9-]`, 1-63, not
/// starting or ending with `-`.
pub fn is_host_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 63
        && !h.starts_with('-')
        && !h.ends_with('-')
        && h.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// `name_rule!()` (the rule of image, service and model names).
fn is_site_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.starts_with(|c: char| c.is_ascii_lowercase())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn problem(file: &Path, text: &str, at: usize, message: impl Into<String>) -> RecipeProblem {
    let (line, col) = line_col(text, at);
    RecipeProblem {
        file: file.to_path_buf(),
        line,
        col,
        message: message.into(),
    }
}

/// The plain-TOML rule the guest's parser relies on: every line is blank,
/// a comment, `key = "value"` or `key = ["a", "b"]`, values without `\`,
/// `%` or control characters.
fn plain_lines(file: &Path, text: &str, problems: &mut Vec<RecipeProblem>) {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let l = line.trim_end_matches(['\n', '\r']);
        let t = l.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let plain = "site files are plain TOML: one `key = \"value\"` or `key = [\"a\", \"b\"]` per line (dotted keys `env.SERVICE.VAR` for service variables), no tables, quoted keys, escapes or `%`";
        let Some((key, value)) = t.split_once('=') else {
            problems.push(problem(file, text, start, plain));
            continue;
        };
        let key = key.trim();
        let value = value.trim();
        let key_ok = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
        let string_ok = |v: &str| {
            v.len() >= 2
                && v.starts_with('"')
                && v.ends_with('"')
                && !v[1..v.len() - 1]
                    .chars()
                    .any(|c| c == '"' || c == '\\' || c == '%' || c.is_control())
        };
        let value_ok = string_ok(value)
            || (value.starts_with('[')
                && value.ends_with(']')
                && value[1..value.len() - 1]
                    .split(',')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .all(string_ok));
        if !key_ok || !value_ok {
            let col = l.len() - l.trim_start().len();
            problems.push(problem(file, text, start + col, plain));
        }
    }
}

/// Whether a site file's `version` (exact, or `PREFIX*`) takes `version`.
pub fn version_matches(pattern: &str, version: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => version.starts_with(prefix),
        None => pattern == version,
    }
}

/// The binding: the file names this image, a version that matches it, and
/// a serial not below the recipe's floor. Missing keys are refused with
/// the line to add (`cairn site sign` adds `image` and `version`).
fn bind_checks(
    file: &Path,
    text: &str,
    parsed: &SiteFileToml,
    decl: &SiteDeclaration,
    out: &mut SiteSettings,
    problems: &mut Vec<RecipeProblem>,
) {
    let end = text.len();
    match &parsed.image {
        None => problems.push(problem(
            file,
            text,
            end,
            format!("the site file does not name its image; add `image = \"{}\"`", decl.image),
        )),
        Some(i) if *i.get_ref() != decl.image => problems.push(problem(
            file,
            text,
            i.span().start,
            format!(
                "the site file is for image {:?}, but this recipe builds {:?}; a site file applies to one image",
                i.get_ref(),
                decl.image
            ),
        )),
        Some(i) => out.image = i.get_ref().clone(),
    }
    match &parsed.version {
        None => problems.push(problem(
            file,
            text,
            end,
            format!(
                "the site file names no version; add `version = \"{}\"` (or a prefix ending in `*`)",
                decl.version
            ),
        )),
        Some(v) if !version_matches(v.get_ref(), &decl.version) => problems.push(problem(
            file,
            text,
            v.span().start,
            format!(
                "the site file is for version {:?}, but this recipe is version {:?}",
                v.get_ref(),
                decl.version
            ),
        )),
        Some(v) => out.version = v.get_ref().clone(),
    }
    match &parsed.serial {
        None => problems.push(problem(
            file,
            text,
            end,
            format!(
                "the site file has no serial; add `serial = \"N\"`, N at least {} and above the serial of every earlier site file for this image",
                decl.min_serial
            ),
        )),
        Some(n) => {
            let v = n.get_ref();
            let parsed = (v.len() <= 15 && v.chars().all(|c| c.is_ascii_digit()))
                .then(|| v.parse::<u64>().ok())
                .flatten();
            match parsed {
                None => problems.push(problem(
                    file,
                    text,
                    n.span().start,
                    format!("serial {v:?} is not a whole number of at most 15 digits"),
                )),
                Some(s) if s < decl.min_serial => problems.push(problem(
                    file,
                    text,
                    n.span().start,
                    format!(
                        "serial {s} is below the recipe's [site] min_serial {}: an older site file; write a new one with a higher serial",
                        decl.min_serial
                    ),
                )),
                Some(s) => out.serial = s,
            }
        }
    }
}

/// The cluster node's keys (`role`, `server`, `join_token`,
/// `join_expires`, `peers`), each allowed by the recipe and well-formed,
/// then the rules between them (guest/site.awk checks the same):
/// an agent names its server and a token, a token its expiry, and the
/// server and this node's address are among the peers.
fn cluster_checks(
    file: &Path,
    text: &str,
    parsed: &SiteFileToml,
    decl: &SiteDeclaration,
    out: &mut SiteSettings,
    problems: &mut Vec<RecipeProblem>,
) {
    let key_at = |v: usize| text[..v].rfind('\n').map(|n| n + 1).unwrap_or(0);
    let push = |problems: &mut Vec<RecipeProblem>, at: usize, m: String| {
        problems.push(problem(file, text, at, m))
    };
    let allowed = |key: &str, at: usize, problems: &mut Vec<RecipeProblem>| {
        if decl.allow.iter().any(|a| a == key) {
            return true;
        }
        push(
            problems,
            key_at(at),
            format!(
                "`{key}` is not allowed for sites by this recipe ([site] allow = {:?}); remove it, or have the platform team allow it",
                decl.allow
            ),
        );
        false
    };
    // A string key: allowed, then `why` has no objection to its value.
    let one = |v: &Option<Spanned<String>>,
               key: &str,
               why: &dyn Fn(&str) -> Option<String>,
               problems: &mut Vec<RecipeProblem>|
     -> Option<String> {
        let v = v.as_ref()?;
        let at = v.span().start;
        if !allowed(key, at, problems) {
            return None;
        }
        match why(v.get_ref()) {
            None => Some(v.get_ref().clone()),
            Some(m) => {
                push(problems, at, m);
                None
            }
        }
    };
    let role = one(
        &parsed.role,
        "role",
        &|r| {
            if !ROLES.contains(&r) {
                Some(format!("role {r:?} must be \"server\" or \"agent\""))
            } else if !decl.roles.iter().any(|x| x == r) {
                Some(format!(
                    "role `{r}` is not one of this release's [cluster] roles {:?}; name one of them, or build a release whose recipe lists {r:?} in [cluster] roles",
                    decl.roles
                ))
            } else {
                None
            }
        },
        problems,
    );
    let ipv4 = |what: &'static str| {
        move |v: &str| {
            (!is_plain_ipv4(v)).then(|| {
                format!("{what} {v:?} is not an IPv4 address without prefix (write \"10.1.4.20\")")
            })
        }
    };
    let server = one(&parsed.server, "server", &ipv4("server"), problems);
    let token = one(
        &parsed.join_token,
        "join_token",
        &|t| {
            (!is_join_token(t)).then(|| {
                "join_token is not a bootstrap token ([a-z0-9]{6}.[a-z0-9]{16}); make one with cairn site token".to_string()
            })
        },
        problems,
    );
    let expires = one(
        &parsed.join_expires,
        "join_expires",
        &|e| {
            join_expires_epoch(e).is_none().then(|| {
                format!("join_expires {e:?} is not a UTC time YYYY-MM-DDTHH:MM:SSZ (\"2027-01-31T00:00:00Z\")")
            })
        },
        problems,
    );
    let mut peers: Option<Vec<String>> = None;
    if let Some(p) = &parsed.peers {
        if allowed("peers", p.span().start, problems) {
            let list = p.get_ref();
            if list.is_empty() || list.len() > MAX_PEERS {
                push(
                    problems,
                    p.span().start,
                    format!(
                        "peers lists {} addresses; list every node of the cluster, 1 to {MAX_PEERS}",
                        list.len()
                    ),
                );
            }
            let mut good: Vec<String> = Vec::new();
            for a in list {
                let v = a.get_ref();
                if !is_plain_ipv4(v) {
                    push(
                        problems,
                        a.span().start,
                        format!("peers {v:?} is not an IPv4 address without prefix (write \"10.1.4.20\")"),
                    );
                } else if good.contains(v) {
                    push(
                        problems,
                        a.span().start,
                        format!("peers lists {v:?} twice; remove one"),
                    );
                } else {
                    good.push(v.clone());
                }
            }
            peers = Some(good);
        }
    }
    // The rules between keys, each at the key that breaks it.
    let at = |v: &Option<Spanned<String>>| v.as_ref().map(|v| v.span().start).unwrap_or(0);
    // A key that is present but bad has its own problem already.
    let missing: Vec<&str> = [
        ("server", &parsed.server),
        ("join_token", &parsed.join_token),
    ]
    .iter()
    .filter(|(_, v)| v.is_none())
    .map(|(k, _)| *k)
    .collect();
    if role.as_deref() == Some("agent") && !missing.is_empty() {
        push(
            problems,
            at(&parsed.role),
            format!(
                "role \"agent\" needs `server` (the server node's address) and `join_token` (cairn site token makes one); add {}",
                missing.join(" and ")
            ),
        );
    }
    if token.is_some() && parsed.join_expires.is_none() {
        push(
            problems,
            at(&parsed.join_token),
            "join_token needs `join_expires` (when the token stops working; cairn site token prints both); add it".into(),
        );
    }
    if let Some(peers) = &peers {
        if let Some(s) = &server {
            if !peers.contains(s) {
                push(
                    problems,
                    at(&parsed.server),
                    format!("server {s:?} is not in peers {peers:?}; list every node of the cluster in peers"),
                );
            }
        }
        if let Some(a) = &out.address {
            let own = a.split('/').next().unwrap_or(a);
            if !peers.iter().any(|p| p == own) {
                push(
                    problems,
                    at(&parsed.address),
                    format!("this node's address {own:?} is not in peers {peers:?}; list every node of the cluster in peers, this one too"),
                );
            }
        }
    }
    out.role = role;
    out.server = server;
    out.join_token = token;
    out.join_expires = expires;
    out.peers = peers.unwrap_or_default();
}

/// `text` with `image` and `version` lines added when it has none (what
/// `cairn site sign` writes before it checks and signs), and the keys
/// added.
pub fn with_binding(text: &str, decl: &SiteDeclaration) -> (String, Vec<&'static str>) {
    let has = |k: &str| {
        text.lines().any(|l| {
            l.split_once('=')
                .is_some_and(|(key, _)| key.trim() == k && !l.trim_start().starts_with('#'))
        })
    };
    let mut out = text.to_string();
    let mut added = Vec::new();
    for (k, v) in [("image", &decl.image), ("version", &decl.version)] {
        if !has(k) {
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&format!("{k} = \"{v}\"\n"));
            added.push(k);
        }
    }
    (out, added)
}

/// Checks a site file's text against the declaration; every problem with
/// `file:line:col`.
pub fn check(file: &Path, text: &str, decl: &SiteDeclaration) -> Result<SiteSettings, RecipeError> {
    let parsed: SiteFileToml = toml::from_str(text).map_err(|e| {
        let at = e.span().map(|s| s.start).unwrap_or(0);
        let m = e.message().trim().replace('\n', " ");
        let m = if m.starts_with("unknown field") {
            format!("{m}; a site file sets only what the recipe's [site] allow names")
        } else {
            m
        };
        RecipeError {
            problems: vec![problem(file, text, at, m)],
        }
    })?;
    let mut problems = Vec::new();
    plain_lines(file, text, &mut problems);
    let allowed = |k: &str| decl.allow.iter().any(|a| a == k);
    let refuse_unless_allowed = |key: &str, at: usize, problems: &mut Vec<RecipeProblem>| {
        if allowed(key) {
            return true;
        }
        problems.push(problem(
            file,
            text,
            at,
            format!(
                "`{key}` is not allowed for sites by this recipe ([site] allow = {:?}); remove it, or have the platform team allow it",
                decl.allow
            ),
        ));
        false
    };
    let mut out = SiteSettings {
        name: parsed.name.get_ref().clone(),
        ..Default::default()
    };
    if !is_site_name(&out.name) {
        problems.push(problem(
            file,
            text,
            parsed.name.span().start,
            format!(
                "site name {:?} must be {}",
                out.name,
                crate::recipe::settings::name_rule!().replace('`', "")
            ),
        ));
    }
    // Spans point at values; the key sits on the same line.
    let key_at = |v: usize| text[..v].rfind('\n').map(|n| n + 1).unwrap_or(0);
    bind_checks(file, text, &parsed, decl, &mut out, &mut problems);
    if let Some(a) = &parsed.address {
        if refuse_unless_allowed("address", key_at(a.span().start), &mut problems) {
            match parse_address(a.get_ref()) {
                Ok(_) => out.address = Some(a.get_ref().clone()),
                Err(m) => problems.push(problem(file, text, a.span().start, m)),
            }
        }
    }
    if let Some(g) = &parsed.gateway {
        if refuse_unless_allowed("gateway", key_at(g.span().start), &mut problems) {
            match g.get_ref().parse::<std::net::Ipv4Addr>() {
                Ok(_) => out.gateway = Some(g.get_ref().clone()),
                Err(_) => problems.push(problem(
                    file,
                    text,
                    g.span().start,
                    format!("gateway {:?} is not an IPv4 address", g.get_ref()),
                )),
            }
        }
    }
    if let Some(h) = &parsed.hostname {
        if refuse_unless_allowed("hostname", key_at(h.span().start), &mut problems) {
            if is_host_name(h.get_ref()) {
                out.hostname = Some(h.get_ref().clone());
            } else {
                problems.push(problem(
                    file,
                    text,
                    h.span().start,
                    format!(
                        "hostname {:?} must be 1-63 of [a-z0-9-], not starting or ending with -",
                        h.get_ref()
                    ),
                ));
            }
        }
    }
    if let Some(c) = &parsed.close_ingress {
        if refuse_unless_allowed("close_ingress", key_at(c.span().start), &mut problems) {
            let mut seen = BTreeMap::new();
            for p in c.get_ref() {
                let v = p.get_ref();
                let listed = parse_ingress(v).ok().and_then(|r| {
                    decl.ingress
                        .iter()
                        .find(|i| parse_ingress(i).ok() == Some(r.clone()))
                });
                match listed {
                    Some(i) if seen.insert(i.clone(), ()).is_none() => {
                        out.close_ingress.push(i.clone())
                    }
                    Some(_) => {}
                    None => problems.push(problem(
                        file,
                        text,
                        p.span().start,
                        format!(
                            "close_ingress {v:?} is not one of the recipe's ingress ports {:?}",
                            decl.ingress
                        ),
                    )),
                }
            }
        }
    }
    if let Some(env) = &parsed.env {
        for (service, vars) in env {
            for (var, value) in vars {
                let key = format!("env.{service}.{var}");
                if let Some(why) = host_steering_name(var) {
                    problems.push(problem(
                        file,
                        text,
                        key_at(value.span().start),
                        format!("`{key}`: {var} {why}, not the service; a site cannot set it"),
                    ));
                    continue;
                }
                if !refuse_unless_allowed(&key, key_at(value.span().start), &mut problems) {
                    continue;
                }
                match env_value_problem(value.get_ref()) {
                    None => out
                        .env
                        .push((service.clone(), var.clone(), value.get_ref().clone())),
                    Some(m) => problems.push(problem(
                        file,
                        text,
                        value.span().start,
                        format!("{key}: the value {m}"),
                    )),
                }
            }
        }
    }
    cluster_checks(file, text, &parsed, decl, &mut out, &mut problems);
    if problems.is_empty() {
        Ok(out)
    } else {
        problems.sort_by_key(|p| (p.line, p.col));
        Err(RecipeError { problems })
    }
}

#[cfg(test)]
#[path = "site/cluster_tests.rs"]
mod cluster_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(allow: &[&str]) -> SiteDeclaration {
        SiteDeclaration {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            ingress: vec!["8080/tcp".into()],
            key_id: "00".repeat(8),
            public_key: String::new(),
            key_path: PathBuf::new(),
            required: false,
            min_serial: 5,
            image: "tiny".into(),
            version: "1.2.0".into(),
            roles: crate::recipe::site::default_roles(),
        }
    }

    /// The binding every site file carries, appended after the lines a
    /// test is about (so their line numbers stay).
    const BIND: &str = "image = \"tiny\"\nversion = \"1.2.0\"\nserial = \"5\"\n";

    fn chk(text: &str, d: &SiteDeclaration) -> Result<SiteSettings, RecipeError> {
        check(Path::new("s.toml"), &format!("{text}{BIND}"), d)
    }

    fn refused(text: &str, allow: &[&str], line: usize, col: usize, start: &str) {
        let e = chk(text, &decl(allow)).unwrap_err();
        let p = &e.problems[0];
        assert_eq!((p.line, p.col), (line, col), "{e}");
        assert!(p.message.starts_with(start), "{e}");
        assert!(
            e.to_string().starts_with(&format!("s.toml:{line}:{col}: ")),
            "{e}"
        );
    }

    const ALL: &[&str] = &["address", "gateway", "hostname", "close_ingress"];

    #[test]
    fn good_site_file_passes() {
        let s = chk(
            "# north depot\nname = \"north\"\nhostname = \"north-1\"\naddress = \"10.1.4.20/24\"\n\
             gateway = \"10.1.4.1\"\nclose_ingress = [\"8080/tcp\"]\n",
            &decl(ALL),
        )
        .unwrap();
        assert_eq!(s.name, "north");
        assert_eq!(s.hostname.as_deref(), Some("north-1"));
        assert_eq!(s.address.as_deref(), Some("10.1.4.20/24"));
        assert_eq!(s.close_ingress, ["8080/tcp"]);
    }

    #[test]
    fn unknown_key_is_refused_at_its_line_and_column() {
        refused(
            "name = \"n\"\n  colour = \"red\"\n",
            ALL,
            2,
            3,
            "unknown field `colour`",
        );
    }

    #[test]
    fn key_the_recipe_does_not_allow_is_refused_at_the_key() {
        refused(
            "name = \"n\"\nhostname = \"h\"\naddress = \"10.0.0.2/24\"\n",
            &["hostname"],
            3,
            1,
            "`address` is not allowed",
        );
        // Control: allowed, it passes.
        chk(
            "name = \"n\"\naddress = \"10.0.0.2/24\"\n",
            &decl(&["address"]),
        )
        .unwrap();
    }

    #[test]
    fn bad_values_are_refused_at_the_value() {
        refused(
            "name = \"n\"\naddress = \"10.0.0.300/24\"\n",
            ALL,
            2,
            11,
            "",
        );
        refused(
            "name = \"n\"\nhostname = \"a.b\"\n",
            ALL,
            2,
            12,
            "hostname \"a.b\"",
        );
        refused(
            "name = \"n\"\nclose_ingress = [\"22/tcp\"]\n",
            ALL,
            2,
            18,
            "close_ingress \"22/tcp\" is not one of",
        );
        refused("name = \"N!\"\n", ALL, 1, 8, "site name");
    }

    #[test]
    fn toml_the_guest_cannot_read_is_refused() {
        refused(
            "name = \"n\"\nhostname = \"a%b\"\n",
            ALL,
            2,
            1,
            "site files are plain TOML",
        );
        refused(
            "name = \"n\"\nhostname = 'h'\n",
            ALL,
            2,
            1,
            "site files are plain TOML",
        );
        refused("name = \"n\"\n[x]\n", ALL, 2, 2, "unknown field `x`");
    }

    #[test]
    fn service_variables_the_recipe_names_are_read_and_others_refused() {
        let allow = ["hostname", "env.inference.SITE_LABEL", "env.inference.LOG"];
        let s = chk(
            "name = \"n\"\nenv.inference.SITE_LABEL = \"north depot\"\nenv.inference.LOG = \"\"\n",
            &decl(&allow),
        )
        .unwrap();
        assert_eq!(
            s.env,
            [
                ("inference".into(), "LOG".into(), "".into()),
                (
                    "inference".into(),
                    "SITE_LABEL".into(),
                    "north depot".into()
                )
            ]
        );
        assert_eq!(decl(&allow).env_vars("inference"), ["LOG", "SITE_LABEL"]);
        assert!(decl(&allow).env_vars("other").is_empty());
        // A variable the recipe does not name, of a named service or not.
        refused(
            "name = \"n\"\n  env.inference.OTHER = \"/x\"\n",
            &allow,
            2,
            1,
            "`env.inference.OTHER` is not allowed",
        );
        refused(
            "name = \"n\"\nenv.other.SITE_LABEL = \"x\"\n",
            &allow,
            2,
            1,
            "`env.other.SITE_LABEL` is not allowed",
        );
        // Values the env file cannot hold as written.
        refused(
            "name = \"n\"\nenv.inference.LOG = \"a$b\"\n",
            &allow,
            2,
            21,
            "env.inference.LOG: the value holds '$'",
        );
        refused(
            "name = \"n\"\nenv.inference.LOG = \"a \"\n",
            &allow,
            2,
            21,
            "env.inference.LOG: the value starts or ends with a space",
        );
        // A table is not a plain line.
        refused(
            "name = \"n\"\n[env.inference]\nLOG = \"x\"\n",
            &allow,
            2,
            1,
            "site files are plain TOML",
        );
        assert_eq!(env_setting("env.inference.LOG"), Some(("inference", "LOG")));
        assert_eq!(env_setting("env.inference.1X"), None);
        assert_eq!(env_setting("env.Inference.X"), None);
        assert_eq!(env_setting("hostname"), None);
    }

    /// Binding on the host: the file names this image, a matching version
    /// (exact or `PREFIX*`) and a serial at or above the floor.
    #[test]
    fn site_files_for_another_image_version_or_an_older_serial_are_refused() {
        let d = decl(ALL);
        let with = |image: &str, version: &str, serial: &str| {
            format!("name = \"n\"\nimage = \"{image}\"\nversion = \"{version}\"\nserial = \"{serial}\"\n")
        };
        let s = check(Path::new("s.toml"), &with("tiny", "1.2.0", "5"), &d).unwrap();
        assert_eq!(
            (s.image.as_str(), s.version.as_str(), s.serial),
            ("tiny", "1.2.0", 5)
        );
        // A range: any 1.2.x; control for the prefix rule.
        check(Path::new("s.toml"), &with("tiny", "1.2.*", "9"), &d).unwrap();
        for (text, line, col, start) in [
            (
                with("other", "1.2.0", "5"),
                2,
                9,
                "the site file is for image \"other\"",
            ),
            (
                with("tiny", "1.3.0", "5"),
                3,
                11,
                "the site file is for version \"1.3.0\"",
            ),
            (
                with("tiny", "1.3.*", "5"),
                3,
                11,
                "the site file is for version \"1.3.*\"",
            ),
            (
                with("tiny", "1.2.0", "4"),
                4,
                10,
                "serial 4 is below the recipe's [site] min_serial 5",
            ),
            (
                with("tiny", "1.2.0", "-1"),
                4,
                10,
                "serial \"-1\" is not a whole number",
            ),
            (
                with("tiny", "1.2.0", "9999999999999999"),
                4,
                10,
                "serial \"9999999999999999\" is not",
            ),
        ] {
            let e = check(Path::new("s.toml"), &text, &d).unwrap_err();
            let p = &e.problems[0];
            assert_eq!((p.line, p.col), (line, col), "{e}");
            assert!(p.message.starts_with(start), "{e}");
        }
        let e = check(Path::new("s.toml"), "name = \"n\"\n", &d).unwrap_err();
        assert!(e.to_string().contains("does not name its image"), "{e}");
        assert!(e.to_string().contains("has no serial"), "{e}");
        // sign's filling-in: only what is missing, after the file's lines.
        let (t, added) = with_binding("name = \"n\"\nimage = \"tiny\"", &d);
        assert_eq!(added, ["version"]);
        assert_eq!(t, "name = \"n\"\nimage = \"tiny\"\nversion = \"1.2.0\"\n");
        assert_eq!(
            d.bind_text(),
            "image tiny\nversion 1.2.0\nmin_serial 5\nrequired 0\nroles server\n"
        );
    }

    #[test]
    fn variables_that_steer_the_host_or_loader_are_refused_at_their_line() {
        let allow = [
            "env.inference.PATH",
            "env.inference.LD_PRELOAD",
            "env.inference.MALLOC_CHECK_",
            "env.inference.lower",
            "env.inference.SITE_LABEL",
        ];
        for (var, why) in [
            ("PATH", "PATH chooses which programs run"),
            ("LD_PRELOAD", "LD_PRELOAD steers the dynamic loader"),
            ("MALLOC_CHECK_", "MALLOC_CHECK_ steers libc's allocator"),
            ("lower", "lower is not an upper-case name"),
        ] {
            // Refused even when a (hand-made) declaration allows it.
            refused(
                &format!("name = \"n\"\n  env.inference.{var} = \"x\"\n"),
                &allow,
                2,
                1,
                &format!("`env.inference.{var}`: {why}"),
            );
        }
        for ok in ["SITE_LABEL", "MODEL_DIR", "_X1"] {
            assert_eq!(host_steering_name(ok), None, "{ok}");
        }
        for bad in [
            "IFS",
            "BASH_ENV",
            "ENV",
            "HOME",
            "SHELL",
            "CDPATH",
            "PS4",
            "GCONV_PATH",
            "LOCPATH",
            "NLSPATH",
            "TZDIR",
            "HOSTALIASES",
            "RES_OPTIONS",
            "LOCALDOMAIN",
            "GLIBC_TUNABLES",
            "LD_LIBRARY_PATH",
            "LD_AUDIT",
            "A-B",
            "1X",
            "",
            "NODE_OPTIONS",
            "PYTHONPATH",
        ] {
            assert!(host_steering_name(bad).is_some(), "{bad}");
        }
        // Control: the service's own variable passes.
        chk(
            "name = \"n\"\nenv.inference.SITE_LABEL = \"x\"\n",
            &decl(&allow),
        )
        .unwrap();
    }

    /// The guest's parser (busybox awk, as the initramfs runs it) refuses
    /// the same: host-steering names, another image or version, a serial
    /// below the floor, a file without binding; and reads a good file.
    #[test]
    fn guest_parser_refuses_steering_names_and_unbound_or_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let awk = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/site.awk");
        let allow = dir.path().join("allow");
        let ingress = dir.path().join("ingress");
        let bind = dir.path().join("bind");
        std::fs::write(
            &allow,
            "hostname\nenv.web.SITE_LABEL\nenv.web.PATH\nenv.web.LD_PRELOAD\nenv.web.lower\n",
        )
        .unwrap();
        std::fs::write(&ingress, "8080/tcp\n").unwrap();
        let d = decl(ALL);
        std::fs::write(&bind, d.bind_text()).unwrap();
        let run = |text: &str| {
            let site = dir.path().join("site.toml");
            std::fs::write(&site, text).unwrap();
            let sh = xshell::Shell::new().unwrap();
            let a = format!("allow={}", allow.display());
            let i = format!("ingress={}", ingress.display());
            let b = format!("bind={}", bind.display());
            let (code, out, _) = crate::host::runner::run_code(
                "test: site.awk",
                xshell::cmd!(sh, "busybox awk -v {a} -v {i} -v {b} -f {awk} {site}"),
            )
            .unwrap();
            (code, out)
        };
        let good = format!("name = \"n\"\nenv.web.SITE_LABEL = \"x y\"\n{BIND}");
        assert_eq!(
            run(&good),
            (
                0,
                "name n\nenv web SITE_LABEL=x y\nimage tiny\nversion 1.2.0\nserial 5\n".into()
            )
        );
        // Control: a prefix range matches.
        assert_eq!(run(&good.replace("\"1.2.0\"", "\"1.2*\"")).0, 0);
        for (text, why) in [
            (
                good.replace("SITE_LABEL", "PATH"),
                "PATH steers the host or the loader",
            ),
            (
                good.replace("SITE_LABEL", "LD_PRELOAD"),
                "LD_PRELOAD steers",
            ),
            (good.replace("SITE_LABEL", "lower"), "lower steers"),
            (
                good.replace("\"tiny\"", "\"other\""),
                "is for image other, not tiny",
            ),
            (
                good.replace("\"1.2.0\"", "\"1.3.0\""),
                "is for version 1.3.0, not 1.2.0",
            ),
            (
                good.replace("\"1.2.0\"", "\"1.3*\""),
                "is for versions 1.3*",
            ),
            (
                good.replace("serial = \"5\"", "serial = \"4\""),
                "serial 4 is below this image's min_serial 5",
            ),
            (
                good.replace("serial = \"5\"", "serial = \"5e3\""),
                "is not a whole number",
            ),
            (
                good.replace("serial = \"5\"\n", ""),
                "does not name its image, version and serial",
            ),
            (
                good.replace("image = \"tiny\"\n", ""),
                "does not name its image, version and serial",
            ),
        ] {
            let (code, out) = run(&text);
            assert_eq!(code, 1, "{text}: {out}");
            // The init reports the first `error` line.
            let e = out
                .lines()
                .find_map(|l| l.strip_prefix("error "))
                .unwrap_or("");
            assert!(e.contains(why), "{text}: {out}");
        }
        // No binding file at all (an initramfs without one): refused.
        std::fs::remove_file(&bind).unwrap();
        let (code, out) = run(&good);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("no site binding"), "{out}");
    }

    #[test]
    fn key_ids_are_read_from_pub_files() {
        use base64::Engine;
        let mut blob = b"Ed".to_vec();
        blob.extend([1, 2, 3, 4, 5, 6, 7, 8]);
        blob.extend([9u8; 32]);
        let text = format!(
            "untrusted comment: sites public key\n{}\n",
            base64::engine::general_purpose::STANDARD.encode(&blob)
        );
        let text = text.as_str();
        assert_eq!(public_key_id(text).unwrap(), "0102030405060708");
        assert!(public_key_id("nope\n").is_err());
        assert!(public_key_id("untrusted comment: x\nAAAA\n").is_err());
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    /// A well-formed `.pub` text with key number 01..08.
    pub fn pub_key_text() -> String {
        use base64::Engine;
        let mut blob = b"Ed".to_vec();
        blob.extend([1, 2, 3, 4, 5, 6, 7, 8]);
        blob.extend([9u8; 32]);
        format!(
            "untrusted comment: sites public key\n{}\n",
            base64::engine::general_purpose::STANDARD.encode(&blob)
        )
    }
}
