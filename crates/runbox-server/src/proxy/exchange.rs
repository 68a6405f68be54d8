//! One HTTP/1.1 exchange with an upstream of a sandbox (the agent, or a service on one of its
//! ports) on a connection of its own, written so that an answer the upstream gave before it
//! stopped reading the request body reaches the client.
//!
//! Issue 4: an upstream that refuses a body answers early and closes without reading the rest
//! (the agent's 413 when an upload fills the disk quota). Our next write then fails (EPIPE or
//! ECONNRESET), and hyper's client treats any IO error as the end of the connection: the
//! exchange failed with the 413 already in the socket (a 503 for the client), or, when hyper
//! had read the head but not yet the body, the 413's body was lost. Which one happened depended
//! on whether hyper read before it wrote. The fix sits below hyper: the connection's IO holds
//! such a write error back (the write stays pending) until no answer can come any more, that
//! is until the read side has ended or nobody waits for the answer, and hyper reads the answer
//! meanwhile. Other write errors, and a body error of the client's (a client that hangs up
//! mid-upload), still end the connection at once, which is how the upstream learns of them.
//!
//! The same race exists one hop out, between the server and its client: once the upstream is
//! done with the request body, dropping the client's body makes hyper's server close the
//! connection under a client that is still writing, and such a client (hyper's, for one) can
//! lose the answer to its own write error. So a request body dropped before its end is read
//! and thrown away for a bounded time and amount first, as nginx's lingering close does.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::{Body, Bytes};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long, and how much of, a client's request body is read and discarded after the
/// upstream is done with it: enough for any client to read the answer that came back.
const LINGER_TIME: Duration = Duration::from_secs(5);
const LINGER_BYTES: usize = 64 << 20;

/// Sends `req` over `io` and returns the answer. The connection is used for this one exchange
/// (and, after a 101, for the upgraded stream).
pub(super) async fn exchange<I>(
    io: I,
    req: hyper::Request<Body>,
) -> Result<hyper::Response<Answer>, hyper::Error>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let hold = Arc::new(Mutex::new(Hold::default()));
    // Dropped with this future, or with the answer's body once it has one.
    let awaited = Awaited(hold.clone());
    let io = HeldWrites { inner: io, hold };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let resp = sender.send_request(req).await?;
    Ok(resp.map(|body| Answer {
        body,
        _awaited: awaited,
    }))
}

/// The state of one connection's write side, shared with whoever waits for the answer.
#[derive(Debug, Default)]
struct Hold {
    /// A write failed because the upstream stopped reading; writes are held from then on.
    stopped_reading: bool,
    /// That write's error, returned once the hold is over.
    error: Option<io::Error>,
    /// No answer can come any more: the read side ended, or the answer is not awaited.
    over: bool,
    /// The task whose write is held.
    writer: Option<Waker>,
}

impl Hold {
    /// A held write: pending while an answer may still be read, then the write's error.
    fn poll_held<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if self.over {
            Poll::Ready(Err(self
                .error
                .take()
                .unwrap_or_else(|| io::ErrorKind::BrokenPipe.into())))
        } else {
            self.writer = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    fn end(&mut self) {
        self.over = true;
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }
}

fn lock(hold: &Mutex<Hold>) -> std::sync::MutexGuard<'_, Hold> {
    hold.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a write error says when the upstream has closed its end (or shut its reading down).
fn stopped_reading(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

/// The connection's IO: reads pass through; a write that finds the upstream no longer
/// reading is held (see the module comment).
struct HeldWrites<I> {
    inner: I,
    hold: Arc<Mutex<Hold>>,
}

impl<I: AsyncWrite + Unpin> HeldWrites<I> {
    fn poll_write_with<T>(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut I>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let mut hold = lock(&self.hold);
        if hold.stopped_reading {
            return hold.poll_held(cx);
        }
        match write(Pin::new(&mut self.inner), cx) {
            Poll::Ready(Err(e)) if stopped_reading(&e) => {
                hold.stopped_reading = true;
                hold.error = Some(e);
                hold.poll_held(cx)
            }
            other => other,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for HeldWrites<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let (before, room) = (buf.filled().len(), buf.remaining() > 0);
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        let ended = match &read {
            Poll::Ready(Ok(())) => room && buf.filled().len() == before,
            Poll::Ready(Err(_)) => true,
            Poll::Pending => false,
        };
        if ended {
            lock(&self.hold).end();
        }
        read
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for HeldWrites<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, |io, cx| io.poll_write(cx, data))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, |io, cx| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .poll_write_with(cx, |io, cx| io.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if lock(&self.hold).stopped_reading {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Ends the hold when dropped: nobody waits for (the rest of) the answer.
#[derive(Debug)]
struct Awaited(Arc<Mutex<Hold>>);

impl Drop for Awaited {
    fn drop(&mut self) {
        lock(&self.0).end();
    }
}

/// The upstream's answer body. Once it is dropped (read to its end, or abandoned), a held
/// write error ends the connection.
#[derive(Debug)]
pub(super) struct Answer {
    body: Incoming,
    _awaited: Awaited,
}

impl hyper::body::Body for Answer {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A client's request body on its way upstream. Dropped before its end, the rest is drained
/// for at most `LINGER_TIME` and `LINGER_BYTES` (see the module comment); a client that hangs
/// up ends the drain at once.
#[derive(Debug)]
pub(super) struct Lingering {
    body: Option<Body>,
    ended: bool,
}

impl Lingering {
    pub(super) fn new(body: Body) -> Self {
        Self {
            body: Some(body),
            ended: false,
        }
    }
}

impl hyper::body::Body for Lingering {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = std::task::ready!(Pin::new(body).poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            self.ended = true;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(mut body) = self.body.take() else {
            return;
        };
        if self.ended || body.is_end_stream() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let mut left = LINGER_BYTES;
            let drain = async {
                while let Some(Ok(frame)) = body.frame().await {
                    let n = frame.data_ref().map_or(0, Bytes::len);
                    match left.checked_sub(n) {
                        Some(rest) => left = rest,
                        None => break,
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER_TIME, drain).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream as StdStream;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// The agent's answer to an upload past the disk quota, its message padded by `padding`
    /// bytes, and that answer's body.
    fn answer_413(padding: usize) -> (String, String) {
        let body = format!(
            r#"{{"code":"PAYLOAD_TOO_LARGE","message":"no space left in the workspace{}"}}"#,
            " ".repeat(padding)
        );
        let head = format!(
            "HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        (head + &body, body)
    }

    /// A connected pair: the proxy's end and the fake upstream's (blocking, for a thread).
    fn pair() -> (tokio::net::UnixStream, StdStream) {
        let (proxy, upstream) = StdStream::pair().expect("socketpair");
        proxy.set_nonblocking(true).expect("nonblocking");
        let proxy = tokio::net::UnixStream::from_std(proxy).expect("register");
        (proxy, upstream)
    }

    /// Reads up to the end of a request head; the upstream reads nothing more unless told.
    fn read_head(s: &mut StdStream) {
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut b = [0u8; 1];
            assert_eq!(s.read(&mut b).expect("read"), 1, "EOF in the head");
            got.push(b[0]);
        }
    }

    /// A request body the test feeds chunk by chunk, as a client would send it.
    fn client_body() -> (tokio::sync::mpsc::Sender<io::Result<Bytes>>, Body) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        });
        (tx, Body::from_stream(chunks))
    }

    fn upload(body: Body) -> hyper::Request<Body> {
        hyper::Request::post("/files/upload")
            .header("host", "runbox-agent")
            .body(Body::new(Lingering::new(body)))
            .expect("request")
    }

    fn chunk() -> Bytes {
        Bytes::from(vec![b'x'; 64 << 10])
    }

    async fn finished(thread: std::thread::JoinHandle<Vec<u8>>) -> Vec<u8> {
        tokio::task::spawn_blocking(move || thread.join().expect("upstream thread"))
            .await
            .expect("join")
    }

    /// The proxy's end of the connection, where the first write after `armed` first lets the
    /// upstream answer and close: that puts the answer in the socket between hyper's read
    /// (nothing yet) and its write (EPIPE), the order that lost the answer in issue 4.
    struct AnswerBeforeWrite {
        inner: tokio::net::UnixStream,
        armed: Arc<AtomicBool>,
        answer_now: Option<std::sync::mpsc::Sender<()>>,
        answered: std::sync::mpsc::Receiver<()>,
    }

    impl AnswerBeforeWrite {
        fn before_write(&mut self) {
            if self.armed.load(Ordering::SeqCst) {
                if let Some(tx) = self.answer_now.take() {
                    tx.send(()).expect("upstream waits");
                    self.answered.recv().expect("upstream answered and closed");
                }
            }
        }
    }

    impl AsyncRead for AnswerBeforeWrite {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for AnswerBeforeWrite {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.before_write();
            Pin::new(&mut self.inner).poll_write(cx, data)
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.before_write();
            Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.inner.is_write_vectored()
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn issue_4_a_413_given_mid_upload_is_not_lost_to_the_write_error() {
        let (proxy, mut upstream) = pair();
        let armed = Arc::new(AtomicBool::new(false));
        let (answer_now, upstream_told) = std::sync::mpsc::channel();
        let (upstream_done, answered) = std::sync::mpsc::channel();
        let io = AnswerBeforeWrite {
            inner: proxy,
            armed: armed.clone(),
            answer_now: Some(answer_now),
            answered,
        };
        let (answer, expected) = answer_413(0);
        let thread = std::thread::spawn({
            let armed = armed.clone();
            move || {
                read_head(&mut upstream);
                armed.store(true, Ordering::SeqCst);
                upstream_told.recv().expect("told to answer");
                upstream.write_all(answer.as_bytes()).expect("answer");
                drop(upstream);
                upstream_done.send(()).expect("proxy waits");
                Vec::new()
            }
        });
        let (tx, body) = client_body();
        let sent = tokio::spawn(exchange(io, upload(body)));
        while !armed.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tx.send(Ok(chunk())).await.expect("body chunk");
        let resp = tokio::time::timeout(Duration::from_secs(10), sent)
            .await
            .expect("an answer within 10 s")
            .expect("exchange task")
            .expect("the upstream's 413, not the write error");
        assert_eq!(resp.status(), 413);
        let text = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(text, expected);
        finished(thread).await;
    }

    #[tokio::test]
    async fn an_answer_read_before_the_write_error_keeps_its_body() {
        let (proxy, mut upstream) = pair();
        // Longer than hyper's first read, so that part of it is still in the socket when the
        // write fails (it fits in the socket's buffer: the upstream need not wait for reads).
        let (answer, expected) = answer_413(96 << 10);
        let thread = std::thread::spawn(move || {
            read_head(&mut upstream);
            upstream.write_all(answer.as_bytes()).expect("answer");
            Vec::new()
        });
        let (tx, body) = client_body();
        let resp = tokio::time::timeout(Duration::from_secs(10), exchange(proxy, upload(body)))
            .await
            .expect("an answer within 10 s")
            .expect("the 413");
        finished(thread).await;
        // The upstream has closed: this chunk's write fails before the answer's body is read.
        tx.send(Ok(chunk())).await.expect("body chunk");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(resp.status(), 413);
        let text = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(text, expected);
    }

    #[tokio::test]
    async fn an_upstream_that_closes_without_an_answer_is_an_error() {
        let (proxy, mut upstream) = pair();
        let thread = std::thread::spawn(move || {
            read_head(&mut upstream);
            Vec::new()
        });
        let (tx, body) = client_body();
        let sent = tokio::spawn(exchange(proxy, upload(body)));
        finished(thread).await;
        let _ = tx.send(Ok(chunk())).await;
        let answer = tokio::time::timeout(Duration::from_secs(10), sent)
            .await
            .expect("no hang")
            .expect("exchange task");
        assert!(answer.is_err(), "{answer:?}");
    }

    #[tokio::test]
    async fn a_client_that_hangs_up_mid_upload_aborts_the_upstream() {
        let (proxy, mut upstream) = pair();
        let reading = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let reading = reading.clone();
            move || {
                read_head(&mut upstream);
                reading.store(true, Ordering::SeqCst);
                let mut rest = Vec::new();
                let _ = upstream.read_to_end(&mut rest);
                rest
            }
        });
        let (tx, body) = client_body();
        let sent = tokio::spawn(exchange(proxy, upload(body)));
        while !reading.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tx.send(Ok(chunk())).await.expect("body chunk");
        tx.send(Err(io::Error::other("the client hung up")))
            .await
            .expect("body error");
        let answer = tokio::time::timeout(Duration::from_secs(10), sent)
            .await
            .expect("no hang")
            .expect("exchange task");
        assert!(answer.is_err(), "{answer:?}");
        // The connection was closed without the chunked body's last chunk.
        let rest = tokio::time::timeout(Duration::from_secs(10), finished(thread))
            .await
            .expect("the upstream saw the connection end");
        assert!(!rest.ends_with(b"0\r\n\r\n"), "the upload looked complete");
    }

    #[tokio::test]
    async fn a_request_body_dropped_before_its_end_is_drained_then_let_go() {
        let (tx, body) = client_body();
        drop(Lingering::new(body));
        let mut sent = 0;
        while tx.send(Ok(chunk())).await.is_ok() {
            sent += chunk().len();
            assert!(sent <= LINGER_BYTES + (1 << 20), "drained past the bound");
        }
        assert!(sent >= LINGER_BYTES, "let go after {sent} bytes");
    }
}
