//! The HTTP/1.1 client against a scripted server on a real loopback socket: what goes on the
//! wire, how each response framing is read, and when a connection may be reused.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::cluster::pool::ConnLimits;

/// A connected client `Conn` and the server's side of the socket.
async fn pair() -> (Box<Conn>, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    let slot = Arc::new(ConnLimits::new(16, 16)).try_slot().unwrap();
    (Conn::new(c, slot), s)
}

/// Reads from the server side until `needle` was seen; returns everything read.
async fn read_until(s: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(needle.len()).any(|w| w == needle) {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("server read timed out")
            .unwrap();
        assert!(
            n > 0,
            "client closed; got {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    got
}

type Back = Arc<Mutex<Option<Box<Conn>>>>;

fn keeper() -> (Back, impl FnOnce(Box<Conn>) + Send + Unpin + 'static) {
    let back: Back = Arc::default();
    let b = back.clone();
    (back, move |c| *b.lock().unwrap() = Some(c))
}

fn get(path: &str) -> (http::request::Parts, Body) {
    Request::get(path)
        .header("host", "svc")
        .body(crate::body::empty())
        .unwrap()
        .into_parts()
}

async fn collect(resp: Response<Body>) -> (Bytes, Option<HeaderMap>) {
    let c = resp.into_body().collect().await.unwrap();
    let trailers = c.trailers().cloned();
    (c.to_bytes(), trailers)
}

#[tokio::test]
async fn content_length_response_and_reuse() {
    let (conn, mut s) = pair().await;
    let (parts, body) = get("/a?x=1");
    let head = encode(&parts, &body, &mut Default::default());
    let server = tokio::spawn(async move {
        let req = read_until(&mut s, b"\r\n\r\n").await;
        assert_eq!(req, b"GET /a?x=1 HTTP/1.1\r\nhost: svc\r\n\r\n");
        // The body arrives in two writes.
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-A: b\r\n\r\nhello")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.write_all(b"world").await.unwrap();
        s
    });
    let (back, f) = keeper();
    let resp = send(conn, head, body, false, f).await.ok().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-a"], "b");
    assert_eq!(collect(resp).await.0, "helloworld");
    let mut s = server.await.unwrap();
    let conn = back.lock().unwrap().take().expect("connection given back");
    assert_eq!(conn.used, 1);
    assert!(conn.is_open());

    // Second exchange on the same connection; an empty body with content-length: 0.
    let (parts, body) = get("/b");
    let head = encode(&parts, &body, &mut Default::default());
    let server = tokio::spawn(async move {
        read_until(&mut s, b"\r\n\r\n").await;
        s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
        s
    });
    let (back, f) = keeper();
    let resp = send(conn, head, body, true, f).await.ok().unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(resp.body().is_end_stream());
    drop(resp);
    let s = server.await.unwrap();
    let conn = back.lock().unwrap().take().expect("given back at once");
    assert_eq!(conn.used, 2);
    // The server closes: the idle connection is seen closed.
    drop(s);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!conn.is_open());
}

#[tokio::test]
async fn chunked_response_with_extensions_and_trailers() {
    let (conn, mut s) = pair().await;
    let (parts, body) = get("/c");
    let head = encode(&parts, &body, &mut Default::default());
    tokio::spawn(async move {
        read_until(&mut s, b"\r\n\r\n").await;
        s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhel")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.write_all(b"lo\r\nA\r\n0123456789\r\n0\r\ngrpc-status: 0\r\nx-t: 1\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let (back, f) = keeper();
    let resp = send(conn, head, body, false, f).await.ok().unwrap();
    let (bytes, trailers) = collect(resp).await;
    assert_eq!(bytes, "hello0123456789");
    let t = trailers.expect("trailers");
    assert_eq!(t["grpc-status"], "0");
    assert_eq!(t["x-t"], "1");
    assert!(
        back.lock().unwrap().is_some(),
        "chunked response leaves it reusable"
    );
}

#[tokio::test]
async fn close_delimited_response_is_read_to_the_end_and_not_reused() {
    let (conn, mut s) = pair().await;
    let (parts, body) = get("/d");
    let head = encode(&parts, &body, &mut Default::default());
    tokio::spawn(async move {
        read_until(&mut s, b"\r\n\r\n").await;
        s.write_all(b"HTTP/1.0 200 OK\r\n\r\nuntil ").await.unwrap();
        s.write_all(b"close").await.unwrap();
    });
    let (back, f) = keeper();
    let resp = send(conn, head, body, false, f).await.ok().unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_10);
    assert_eq!(collect(resp).await.0, "until close");
    assert!(back.lock().unwrap().is_none());
}

#[tokio::test]
async fn informational_responses_are_skipped_and_head_has_no_body() {
    let (conn, mut s) = pair().await;
    let (parts, body) = get("/e");
    let head = encode(&parts, &body, &mut Default::default());
    let server = tokio::spawn(async move {
        read_until(&mut s, b"\r\n\r\n").await;
        s.write_all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </s>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        read_until(&mut s, b"\r\n\r\n").await;
        // HEAD: content-length describes the GET's body; none follows.
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
            .await
            .unwrap();
        s
    });
    let (back, f) = keeper();
    let resp = send(conn, head, body, false, f).await.ok().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(collect(resp).await.0, "ok");
    let conn = back.lock().unwrap().take().unwrap();
    let (parts, body) = Request::head("/e")
        .body(crate::body::empty())
        .unwrap()
        .into_parts();
    let head = encode(&parts, &body, &mut Default::default());
    let (back, f) = keeper();
    let resp = send(conn, head, body, true, f).await.ok().unwrap();
    assert_eq!(resp.headers()["content-length"], "5");
    assert!(resp.body().is_end_stream());
    drop(resp);
    assert!(back.lock().unwrap().is_some());
    server.await.unwrap();
}

#[tokio::test]
async fn streaming_request_body_goes_chunked_with_trailers() {
    let (conn, mut s) = pair().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, BoxError>>(4);
    let body = crate::body::boxed(http_body_util::StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    let (parts, _) = Request::post("/up")
        .header("host", "svc")
        .body(())
        .unwrap()
        .into_parts();
    let head = encode(&parts, &body, &mut Default::default());
    let server = tokio::spawn(async move {
        let got = read_until(&mut s, b"0\r\nx-sum: 9\r\n\r\n").await;
        s.write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        String::from_utf8(got).unwrap()
    });
    let feeder = tokio::spawn(async move {
        tx.send(Ok(http_body::Frame::data(Bytes::from("abc"))))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.send(Ok(http_body::Frame::data(Bytes::from("0123456789abcdef"))))
            .await
            .unwrap();
        let mut t = HeaderMap::new();
        t.insert("x-sum", HeaderValue::from_static("9"));
        tx.send(Ok(http_body::Frame::trailers(t))).await.unwrap();
    });
    let (back, f) = keeper();
    let resp = send(conn, head, body, false, f).await.ok().unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    drop(resp);
    feeder.await.unwrap();
    assert_eq!(
        server.await.unwrap(),
        "POST /up HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\n\r\n\
         3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nx-sum: 9\r\n\r\n"
    );
    assert!(back.lock().unwrap().is_some());
}

#[tokio::test]
async fn known_length_body_gets_content_length_in_one_write() {
    let (conn, mut s) = pair().await;
    let (parts, _) = Request::put("/k").body(()).unwrap().into_parts();
    let body = crate::body::full("payload");
    let head = encode(&parts, &body, &mut Default::default());
    let server = tokio::spawn(async move {
        let got = read_until(&mut s, b"payload").await;
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        got
    });
    let (_back, f) = keeper();
    send(conn, head, body, false, f).await.ok().unwrap();
    assert_eq!(
        server.await.unwrap(),
        b"PUT /k HTTP/1.1\r\ncontent-length: 7\r\n\r\npayload"
    );
}

#[tokio::test]
async fn early_response_while_the_body_still_streams() {
    let (conn, mut s) = pair().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, BoxError>>(4);
    let body = crate::body::boxed(http_body_util::StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    let (parts, _) = Request::post("/big").body(()).unwrap().into_parts();
    let head = encode(&parts, &body, &mut Default::default());
    tokio::spawn(async move {
        read_until(&mut s, b"\r\n\r\n").await;
        s.write_all(
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbig!",
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    tx.send(Ok(http_body::Frame::data(Bytes::from("first"))))
        .await
        .unwrap();
    let (back, f) = keeper();
    let resp = tokio::time::timeout(Duration::from_secs(5), send(conn, head, body, false, f))
        .await
        .expect("the response is not held back by the unfinished body")
        .ok()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(collect(resp).await.0, "big!");
    assert!(back.lock().unwrap().is_none());
    drop(tx);
}

#[tokio::test]
async fn a_reused_connection_closed_under_an_idempotent_request_hands_it_back() {
    let (conn, s) = pair().await;
    drop(s);
    let (parts, body) = get("/r");
    let head = encode(&parts, &body, &mut Default::default());
    let (_b, f) = keeper();
    let failed = send(conn, head, body, true, f).await.err().unwrap();
    assert!(failed.retry.is_some(), "{}", failed.error);

    // Not for a POST that was written out: the server might have acted on it.
    let (conn, mut s) = pair().await;
    let (parts, _) = Request::post("/r").body(()).unwrap().into_parts();
    let body = crate::body::full("x");
    let head = encode(&parts, &body, &mut Default::default());
    tokio::spawn(async move {
        read_until(&mut s, b"x").await;
    });
    let (_b, f) = keeper();
    let failed = send(conn, head, body, true, f).await.err().unwrap();
    assert!(failed.retry.is_none());

    // Nor on a fresh connection.
    let (conn, s) = pair().await;
    drop(s);
    let (parts, body) = get("/r");
    let head = encode(&parts, &body, &mut Default::default());
    let (_b, f) = keeper();
    assert!(send(conn, head, body, false, f)
        .await
        .err()
        .unwrap()
        .retry
        .is_none());
}

#[tokio::test]
async fn malformed_and_truncated_responses_fail() {
    for (reply, want) in [
        (&b"HTTP/1.1 abc OK\r\n\r\n"[..], "invalid response"),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            "conflicting",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort",
            "closed",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            "chunk size",
        ),
    ] {
        let (conn, mut s) = pair().await;
        let (parts, body) = get("/m");
        let head = encode(&parts, &body, &mut Default::default());
        tokio::spawn(async move {
            read_until(&mut s, b"\r\n\r\n").await;
            s.write_all(reply).await.unwrap();
        });
        let (back, f) = keeper();
        let err = match send(conn, head, body, false, f).await {
            Err(f) => f.error.to_string(),
            Ok(resp) => match resp.into_body().collect().await {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{:?} was accepted", String::from_utf8_lossy(reply)),
            },
        };
        assert!(
            err.contains(want),
            "{err} for {:?}",
            String::from_utf8_lossy(reply)
        );
        assert!(back.lock().unwrap().is_none());
    }
}

#[tokio::test]
async fn a_response_trickling_in_byte_by_byte_parses_the_same() {
    let (conn, mut s) = pair().await;
    let (parts, body) = get("/t");
    let head = encode(&parts, &body, &mut Default::default());
    let reply: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-a: 1\r\n\r\n\
        4\r\nabcd\r\n3;x=y\r\nefg\r\n0\r\nx-t: done\r\n\r\n";
    tokio::spawn(async move {
        read_until(&mut s, b"\r\n\r\n").await;
        s.set_nodelay(true).unwrap();
        for b in reply {
            s.write_all(&[*b]).await.unwrap();
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let (back, f) = keeper();
    let resp = send(conn, head, body, false, f).await.ok().unwrap();
    assert_eq!(resp.headers()["x-a"], "1");
    let (bytes, trailers) = collect(resp).await;
    assert_eq!(bytes, "abcdefg");
    assert_eq!(trailers.unwrap()["x-t"], "done");
    assert!(back.lock().unwrap().is_some());
}

#[tokio::test]
async fn a_large_response_does_not_leave_a_large_buffer_on_the_idle_connection() {
    let (conn, mut s) = pair().await;
    let (parts, body) = get("/big");
    let head = encode(&parts, &body, &mut Default::default());
    const LEN: usize = 1024 * 1024;
    tokio::spawn(async move {
        read_until(&mut s, b"\r\n\r\n").await;
        s.write_all(format!("HTTP/1.1 200 OK\r\ncontent-length: {LEN}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        s.write_all(&vec![b'x'; LEN]).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let (back, f) = keeper();
    let resp = send(conn, head, body, false, f).await.ok().unwrap();
    // Read frame by frame, as a downstream connection does: each frame is dropped once written.
    let mut body = resp.into_body();
    let mut total = 0;
    while let Some(frame) = body.frame().await {
        total += frame.unwrap().into_data().unwrap().len();
    }
    assert_eq!(total, LEN);
    let conn = back.lock().unwrap().take().expect("reusable");
    assert!(conn.read_hint > 64 * 1024, "reads grew: {}", conn.read_hint);
    // Idle, the connection holds no read buffer at all.
    assert_eq!(conn.rbuf.capacity(), 0);
}
