//! The stand-in's HTTP/1.1 over TLS: the accept loop, one thread per connection, reading a
//! request off the wire and writing the answer [`super::api::handle`] gives.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Inner;
use super::api::handle;

pub(super) fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    while inner.running.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((tcp, _)) => {
                let _ = tcp.set_nonblocking(false);
                if let Ok(c) = tcp.try_clone() {
                    inner.conns.lock().unwrap_or_else(|e| e.into_inner()).push(c);
                }
                let inner = inner.clone();
                std::thread::spawn(move || serve_connection(inner, tcp));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// One HTTP/1.1 request as read off the wire.
pub(super) struct HttpRequest {
    pub(super) method: String,
    pub(super) target: String,
    headers: Vec<(String, String)>,
    pub(super) body: Vec<u8>,
}

impl HttpRequest {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn serve_connection(inner: Arc<Inner>, tcp: TcpStream) {
    let Ok(conn) = rustls::ServerConnection::new(inner.tls.clone()) else { return };
    let mut stream = BufReader::new(rustls::StreamOwned::new(conn, tcp));
    loop {
        let req = match read_request(&mut stream) {
            Ok(Some(r)) => r,
            _ => return,
        };
        while inner.stalled.load(Ordering::SeqCst) {
            if !inner.running.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !inner.running.load(Ordering::SeqCst) {
            return;
        }
        let (status, body, warnings) = handle(&inner, &req);
        let close = req.header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let mut head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            reason_phrase(status),
            body.len()
        );
        for w in warnings {
            head.push_str(&format!("Warning: 299 - \"{w}\"\r\n"));
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let w = stream.get_mut();
        if w.write_all(head.as_bytes()).and_then(|()| w.write_all(body.as_bytes())).and_then(|()| w.flush()).is_err()
            || close
        {
            return;
        }
    }
}

fn read_request(r: &mut impl BufRead) -> std::io::Result<Option<HttpRequest>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Ok(None);
    };
    let (method, target) = (method.to_string(), target.to_string());
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut req = HttpRequest { method, target, headers, body: Vec::new() };
    if req.header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    line.clear();
                    if r.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk)?;
            chunk.truncate(size);
            req.body.extend_from_slice(&chunk);
        }
    } else if let Some(n) = req.header("content-length").and_then(|n| n.parse::<usize>().ok()) {
        req.body = vec![0; n];
        r.read_exact(&mut req.body)?;
    }
    Ok(Some(req))
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        _ => "Status",
    }
}
