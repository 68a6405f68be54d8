//! Network: raw and packet sockets (forging traffic), reaching host services on loopback or
//! through abstract unix sockets (both scoped by the network namespace), and which
//! interfaces exist.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::json;

use crate::report::{check, Failure, Outcome, Success};

fn socket(domain: libc::c_int, kind: libc::c_int, protocol: libc::c_int, what: &str) -> Outcome {
    // SAFETY: plain integers.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
    check(fd as libc::c_long, &format!("socket({what})"))?;
    // SAFETY: our own fd, closed once.
    unsafe { libc::close(fd) };
    Ok(Success::new(format!("opened a {what} socket")))
}

pub fn raw_socket(_: &[String]) -> Outcome {
    socket(
        libc::AF_INET,
        libc::SOCK_RAW,
        libc::IPPROTO_ICMP,
        "AF_INET, SOCK_RAW, ICMP",
    )
}

pub fn packet_socket(_: &[String]) -> Outcome {
    let all = (libc::ETH_P_ALL as u16).to_be() as libc::c_int;
    socket(
        libc::AF_PACKET,
        libc::SOCK_RAW,
        all,
        "AF_PACKET, SOCK_RAW, ETH_P_ALL",
    )
}

pub fn connect_tcp(args: &[String]) -> Outcome {
    let host = crate::arg(args, 0, "HOST");
    let port: u16 = crate::arg(args, 1, "PORT").parse().map_err(|_| Failure {
        errno: libc::EINVAL,
        step: "parse PORT".into(),
    })?;
    let addr: SocketAddr = (host, port)
        .to_socket_addrs()
        .map_err(|e| Failure::from_io(format!("resolve {host}"), &e))?
        .next()
        .ok_or(Failure {
            errno: libc::EADDRNOTAVAIL,
            step: format!("resolve {host}"),
        })?;
    TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| Failure::from_io(format!("connect({addr})"), &e))?;
    Ok(Success::new(format!("connected to {addr}")))
}

/// Connects to the abstract unix socket "\0NAME".
pub fn connect_abstract(args: &[String]) -> Outcome {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixStream};
    let name = crate::arg(args, 0, "NAME");
    let addr = SocketAddr::from_abstract_name(name.as_bytes())
        .map_err(|e| Failure::from_io("abstract address", &e))?;
    UnixStream::connect_addr(&addr)
        .map_err(|e| Failure::from_io(format!("connect(@{name})"), &e))?;
    Ok(Success::new(format!("connected to @{name}")))
}

/// Interface names from /proc/net/dev (per network namespace) and from if_nameindex
/// (netlink), which must agree.
pub fn netifs(_: &[String]) -> Outcome {
    let dev = std::fs::read_to_string("/proc/net/dev")
        .map_err(|e| Failure::from_io("read(/proc/net/dev)", &e))?;
    let mut from_proc: Vec<String> = dev
        .lines()
        .skip(2)
        .filter_map(|line| Some(line.split_once(':')?.0.trim().to_string()))
        .collect();
    from_proc.sort();
    let from_netlink = match if_names() {
        Ok(names) => json!(names),
        Err(error) => json!({ "error": error }),
    };
    Ok(Success::with_data(
        format!("interfaces: {from_proc:?}"),
        json!({ "interfaces": from_proc, "if_nameindex": from_netlink }),
    ))
}

fn if_names() -> Result<Vec<String>, String> {
    // SAFETY: no arguments; the result is freed below.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(std::io::Error::last_os_error().to_string());
    }
    let mut names = Vec::new();
    let mut entry = list;
    // SAFETY: the array ends with an entry whose index is 0; names are NUL-terminated.
    unsafe {
        while (*entry).if_index != 0 {
            names.push(
                std::ffi::CStr::from_ptr((*entry).if_name)
                    .to_string_lossy()
                    .into_owned(),
            );
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
    }
    names.sort();
    Ok(names)
}
