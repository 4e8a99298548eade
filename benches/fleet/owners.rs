//! Which process sent a request: the counting proxies ask, for each connection they accept, who
//! owns the client's end of it. All nodes reach the registry from 127.0.0.1, so the address says
//! nothing; the kernel's socket table does (`/proc/net/tcp` gives the socket's inode, and
//! `/proc/<pid>/fd` who holds it). Only the processes registered here are searched.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

/// Processes the proxies can name, by pid.
#[derive(Clone, Default)]
pub struct Owners(Arc<RwLock<HashMap<u32, String>>>);

impl Owners {
    /// Requests from `pid`'s sockets are `label`'s.
    pub fn set(&self, pid: u32, label: &str) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pid, label.to_string());
    }

    pub fn remove(&self, pid: u32) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pid);
    }

    /// The label of the registered process holding the client end of the connection from `peer`
    /// to `local`; `other` when none of them does.
    pub fn resolve(&self, peer: SocketAddr, local: SocketAddr) -> Option<String> {
        let Some(inode) = socket_inode(peer, local) else {
            return Some("other".into());
        };
        let owners = self.0.read().unwrap_or_else(|p| p.into_inner()).clone();
        let wanted = format!("socket:[{inode}]");
        for (pid, label) in owners {
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == wanted.as_str()) {
                    return Some(label);
                }
            }
        }
        Some("other".into())
    }
}

/// The inode of the TCP socket whose local end is `client` and remote end `server`.
fn socket_inode(client: SocketAddr, server: SocketAddr) -> Option<u64> {
    let table = match client.ip() {
        IpAddr::V4(_) => "/proc/net/tcp",
        IpAddr::V6(_) => "/proc/net/tcp6",
    };
    let text = std::fs::read_to_string(table).ok()?;
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(remote), Some(inode)) =
            (fields.get(1), fields.get(2), fields.get(9))
        else {
            continue;
        };
        if parse_address(local) == Some(client) && parse_address(remote) == Some(server) {
            return inode.parse().ok();
        }
    }
    None
}

/// `0100007F:1F90` (the address as the kernel holds it in memory, in hex, and the port) as an
/// address.
fn parse_address(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => IpAddr::from(u32::from_str_radix(ip, 16).ok()?.to_ne_bytes()),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).ok()?;
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            IpAddr::from(bytes)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}
