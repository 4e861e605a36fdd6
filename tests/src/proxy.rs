//! A TCP proxy in front of the broker, to take the network path down and bring it back: every
//! open connection is closed and new ones are refused while it is cut. It can also hold the
//! broker's answers back for a while, as a distant broker would: the crash tests use that to
//! kill journeyd while a batch's actions are in the broker's log but not acknowledged; the
//! clients named by [`Proxy::answer_promptly`] (the test's publisher) are answered at once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A proxy from a loopback port to a target address. It runs on its own thread and runtime.
pub struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    connections: Arc<AtomicU64>,
    delay_ms: Arc<AtomicU64>,
    prompt: Arc<std::sync::Mutex<Vec<String>>>,
    _thread: std::thread::JoinHandle<()>,
}

impl Proxy {
    /// Listens on `port` and forwards to `target`.
    pub fn start(port: u16, target: String) -> Proxy {
        let up = Arc::new(AtomicBool::new(true));
        let (generation, rx) = watch::channel(0u64);
        let connections = Arc::new(AtomicU64::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let prompt: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let up = up.clone();
            let connections = connections.clone();
            let delay_ms = delay_ms.clone();
            let prompt = prompt.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let answers = Answers { delay_ms, prompt };
                rt.block_on(serve(port, target, up, rx, connections, answers, ready_tx));
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the proxy listens");
        Proxy {
            port,
            up,
            generation,
            connections,
            delay_ms,
            prompt,
            _thread: thread,
        }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Takes the path down: closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Brings the path back.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// Holds every answer of the broker back this long from now on (zero: none).
    pub fn delay_answers(&self, by: Duration) {
        self.delay_ms.store(by.as_millis() as u64, Ordering::SeqCst);
    }

    /// Answers the connections of clients with this `client.id` at once, whatever
    /// [`Proxy::delay_answers`] says (from their next connection on).
    pub fn answer_promptly(&self, client_id: &str) {
        self.prompt.lock().unwrap().push(client_id.to_owned());
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

/// How the broker's answers are held back.
#[derive(Clone)]
struct Answers {
    delay_ms: Arc<AtomicU64>,
    /// The `client.id`s answered at once.
    prompt: Arc<std::sync::Mutex<Vec<String>>>,
}

/// The `client.id` in the header of the Kafka request at the start of `bytes`, once they hold
/// it: size (4), api key (2), version (2), correlation id (4), then a length (2) and the id.
fn client_id(bytes: &[u8]) -> Option<&[u8]> {
    let len = i16::from_be_bytes(bytes.get(12..14)?.try_into().ok()?);
    let len = usize::try_from(len).unwrap_or(0);
    bytes.get(14..14 + len)
}

async fn serve(
    port: u16,
    target: String,
    up: Arc<AtomicBool>,
    generation: watch::Receiver<u64>,
    connections: Arc<AtomicU64>,
    answers: Answers,
    ready: std::sync::mpsc::Sender<()>,
) {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let listener = TcpListener::bind(addr)
        .await
        .expect("the proxy port is free");
    let _ = ready.send(());
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if !up.load(Ordering::SeqCst) {
            // Refused: closed at once, as a broker that is down would.
            drop(client);
            continue;
        }
        connections.fetch_add(1, Ordering::SeqCst);
        let target = target.clone();
        let answers = answers.clone();
        let mut generation = generation.clone();
        let at_start = *generation.borrow_and_update();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(&target).await else {
                return;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let pipe = async {
                // The first request names the client: forwarded once read.
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                let prompt = loop {
                    if let Some(id) = client_id(&head) {
                        let prompt = answers.prompt.lock().unwrap();
                        break prompt.iter().any(|p| p.as_bytes() == id);
                    }
                    match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                };
                if sw.write_all(&head).await.is_err() {
                    return;
                }
                let none = AtomicU64::new(0);
                let delay_ms = if prompt { &none } else { &*answers.delay_ms };
                tokio::select! {
                    _ = tokio::io::copy(&mut cr, &mut sw) => {},
                    _ = delayed_copy(&mut sr, &mut cw, delay_ms) => {},
                }
            };
            let cut = async {
                while *generation.borrow_and_update() == at_start {
                    if generation.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            };
            tokio::select! {
                _ = pipe => {},
                _ = cut => {},
            }
            // Dropping both halves of both sockets closes the connection.
        });
    }
}

/// Copies from `from` to `to`, each chunk written `delay_ms` after it was read (in order).
async fn delayed_copy(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    delay_ms: &AtomicU64,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let due = tokio::time::Instant::now()
                        + Duration::from_millis(delay_ms.load(Ordering::SeqCst));
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    };
    let write = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    // Ends when either side closes; what was read and not yet written goes with it.
    tokio::join!(read, write);
}
