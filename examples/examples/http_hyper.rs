// SPDX-License-Identifier: MIT OR Apache-2.0
//! HTTP/1.1 over V4V with hyper on tokio (`v4v::tokio`).
//!
//! - `http_hyper serve PORT`: serves `GET /` (a greeting naming the client's V4V address, as the
//!   hypervisor attested it) and `POST /echo` (the request body back), one task per connection.
//! - `http_hyper get DOM:PORT PATH` / `http_hyper post DOM:PORT PATH < BODY`: one request through a
//!   V4V stream; the status goes to stderr, the body to stdout; exits 1 unless the status is 2xx.
//!
//! The daemon's socket comes from `V4V_SOCKET`, as for every client.

use std::convert::Infallible;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use v4v::client::SockAddr;
use v4v::tokio::{Listener, Stream};

type Error = Box<dyn std::error::Error + Send + Sync>;

async fn handle(peer: SockAddr, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Error> {
    let reply = |code, body: Bytes| {
        Response::builder()
            .status(code)
            .body(Full::new(body))
            .map_err(Error::from)
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => reply(StatusCode::OK, format!("hello, {peer}\n").into()),
        (&Method::POST, "/echo") => {
            let body = req.into_body().collect().await?.to_bytes();
            reply(StatusCode::OK, body)
        }
        _ => reply(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

async fn serve(port: u32) -> Result<(), Error> {
    let mut listener = Listener::bind(port).await?;
    eprintln!("serving HTTP on V4V port {}", listener.local_port());
    loop {
        let (stream, peer) = listener.accept().await?;
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| async move {
                Ok::<_, Infallible>(handle(peer, req).await.unwrap_or_else(|e| {
                    let mut r = Response::new(Full::new(Bytes::from(format!("{e}\n"))));
                    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    r
                }))
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                eprintln!("{peer}: {e}");
            }
        });
    }
}

async fn fetch(addr: SockAddr, method: Method, path: &str, body: Vec<u8>) -> Result<bool, Error> {
    let stream = Stream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Full::new(Bytes::from(body)))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    eprintln!("{status}");
    let body = resp.into_body().collect().await?.to_bytes();
    tokio::io::stdout().write_all(&body).await?;
    drop(sender);
    conn.await??;
    Ok(status.is_success())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: http_hyper serve PORT | get DOM:PORT PATH | post DOM:PORT PATH < BODY";
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve", port] => serve(port.parse()?).await,
        [verb @ ("get" | "post"), addr, path] => {
            let mut body = Vec::new();
            let method = if *verb == "post" {
                tokio::io::stdin().read_to_end(&mut body).await?;
                Method::POST
            } else {
                Method::GET
            };
            if !fetch(addr.parse()?, method, path, body).await? {
                std::process::exit(1);
            }
            Ok(())
        }
        _ => Err(usage.into()),
    }
}
