//! `--admin-listen ADDR|none`: where a binary's admin HTTP server listens (both binaries spell
//! it the same way).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// Where the admin HTTP server listens, or nowhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminListen {
    /// Serve on this address.
    Addr(SocketAddr),
    /// No admin server.
    Disabled,
}

impl FromStr for AdminListen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("none") || s.eq_ignore_ascii_case("off") {
            return Ok(Self::Disabled);
        }
        s.parse()
            .map(Self::Addr)
            .map_err(|_| format!("`{s}` is not ADDR:PORT or `none`"))
    }
}

impl fmt::Display for AdminListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(a) => write!(f, "http://{a}"),
            Self::Disabled => f.write_str("off"),
        }
    }
}
