//! `journeyd`: the service binary.

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use journeyd::app;
use journeyd::config::{Config, LogFormat};
use journeyd::demo::{self, DemoOptions};
use journeyd::embedded::Embedded;
use journeyd::service;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use tokio_util::sync::CancellationToken;

/// mimalloc, not the system allocator: glibc's malloc took about a quarter of the CPU while
/// firing timers (batches are built on one thread and freed on another), and the firing rate
/// rose by a third with mimalloc (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "journeyd",
    version,
    about = "journeyd: event-streaming customer journey orchestrator."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the service: consumes touchpoints, runs the journeys, produces actions.
    ///
    /// Configuration comes from built-in defaults, then --config, then JOURNEYD__SECTION__KEY
    /// environment variables (JOURNEYD__KAFKA__BOOTSTRAP_SERVERS sets `bootstrap.servers`),
    /// then these flags. SIGHUP reloads the journeys folder (all of it or nothing); SIGTERM
    /// stops cleanly (finish the batch, flush, close the store); a second signal stops at once.
    Run(RunArgs),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The configuration file (TOML).
    #[arg(long, env = "JOURNEYD_CONFIG")]
    config: Option<PathBuf>,
    /// The journeys folder (overrides journeys.dir).
    #[arg(long)]
    journeys: Option<PathBuf>,
    /// The RocksDB directory (overrides store.path).
    #[arg(long)]
    data: Option<PathBuf>,
    /// The HTTP listen address (overrides http.listen).
    #[arg(long)]
    http: Option<String>,
    /// The operator API's listen address (overrides admin.listen; empty disables it).
    #[arg(long)]
    admin: Option<String>,
    /// Start librdkafka's mock cluster in the process and use it (no broker to install).
    #[arg(long)]
    embedded_kafka: bool,
    /// Publish a steady stream of realistic touchpoints and print a live summary.
    #[arg(long)]
    demo: bool,
    /// Synthetic customers in the demo.
    #[arg(long, default_value_t = 5000)]
    demo_customers: usize,
    /// Demo events per second.
    #[arg(long, default_value_t = 500)]
    demo_rate: u32,
    /// Run the processing clock N times faster (demo and staging: refused with a real broker
    /// unless --force-clock-speed).
    #[arg(long)]
    clock_speed: Option<f64>,
    /// Allow --clock-speed with a real broker.
    #[arg(long)]
    force_clock_speed: bool,
    /// Print the effective configuration and exit.
    #[arg(long)]
    dump_config: bool,
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    journeyd::memory::no_transparent_huge_pages();
    let cli = Cli::parse();
    let Command::Run(args) = cli.command;
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("journeyd: error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn run(args: RunArgs) -> Result<()> {
    let mut config = Config::load(args.config.as_deref(), std::env::vars())?;
    if let Some(d) = args.journeys {
        config.journeys.dir = d;
    }
    if let Some(d) = args.data {
        config.store.path = d;
    }
    if let Some(h) = args.http {
        config.http.listen = h;
    }
    if let Some(a) = args.admin {
        config.admin.listen = a;
    }
    if let Some(s) = args.clock_speed {
        config.processing.clock_speed = s;
    }
    config.processing.force_clock_speed |= args.force_clock_speed;
    if !(config.processing.clock_speed.is_finite() && config.processing.clock_speed > 0.0) {
        bail!("--clock-speed must be a positive number");
    }
    if args.dump_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    if config.processing.clock_speed != 1.0
        && !args.embedded_kafka
        && !config.processing.force_clock_speed
    {
        bail!(
            "a clock speed of {} is for demos and staging: with a real broker it would fire timers early; add --force-clock-speed if you mean it",
            config.processing.clock_speed
        );
    }
    init_logging(&config);
    // A bad tokens file stops the start, before anything else happens.
    let tokens = journeyd::admin::tokens::Tokens::load(
        config.admin.tokens_file.as_deref(),
        std::env::var(journeyd::admin::tokens::ENV).ok().as_deref(),
    )?;

    let opened = app::open(&config)?;

    let embedded = if args.embedded_kafka {
        let mut topics: Vec<(String, i32)> =
            config.inputs.iter().map(|i| (i.topic.clone(), 4)).collect();
        topics.push((config.outputs.dead_letter_topic.clone(), 1));
        topics.push((config.outputs.action_dead_letter_topic.clone(), 1));
        if let Some(changelog) = config.changelog_topic() {
            topics.push((changelog, 4));
        }
        if let Some(control) = config.control_topic() {
            topics.push((control, 1));
        }
        topics.push((config.counts_topic(), 1));
        let channels = app::channels(&opened.engine);
        topics.extend(channels.iter().map(|c| (config.actions_topic(c), 1)));
        let e = Embedded::start(&topics).context("cannot start the embedded Kafka mock cluster")?;
        config
            .kafka
            .insert("bootstrap.servers".into(), e.bootstrap_servers());
        println!(
            "journeyd: embedded Kafka (librdkafka mock cluster) at {} with topics {}",
            e.bootstrap_servers(),
            topics
                .iter()
                .map(|(t, _)| t.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Some(e)
    } else {
        None
    };

    let shared = app::shared(config, opened)?;
    let shutdown = CancellationToken::new();
    let tasks = tokio_util::task::TaskTracker::new();

    if !shared.config.http.listen.is_empty() {
        let listener = tokio::net::TcpListener::bind(&shared.config.http.listen)
            .await
            .with_context(|| format!("cannot listen on {}", shared.config.http.listen))?;
        println!(
            "journeyd: metrics and health on http://{}",
            listener.local_addr()?
        );
        let app = journeyd::http::router(shared.clone());
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let serve = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await });
            if let Err(error) = serve.await {
                tracing::error!(%error, "The HTTP endpoint failed.");
            }
        });
    }

    if !shared.config.admin.listen.is_empty() {
        let listener = tokio::net::TcpListener::bind(&shared.config.admin.listen)
            .await
            .with_context(|| format!("cannot listen on {}", shared.config.admin.listen))?;
        if tokens.is_empty() {
            tracing::warn!(
                "No operator token (admin.tokens_file, JOURNEYD_ADMIN_TOKENS): the operator API \
                 refuses every call."
            );
        }
        println!(
            "journeyd: operator API on http://{} ({} tokens)",
            listener.local_addr()?,
            tokens.len()
        );
        let app = journeyd::admin::router(shared.clone(), tokens)?;
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let serve = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await });
            if let Err(error) = serve.await {
                tracing::error!(%error, "The operator API failed.");
            }
        });
    }

    {
        let (stop, shared) = (shutdown.clone(), shared.clone());
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
                signal(SignalKind::hangup()),
            ) else {
                tracing::error!("Cannot install signal handlers.");
                return;
            };
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                    _ = hup.recv() => {
                        tracing::info!("SIGHUP: reloading the journeys after this batch.");
                        shared.reload.store(true, Ordering::SeqCst);
                        continue;
                    }
                }
                if stop.is_cancelled() {
                    eprintln!("journeyd: second signal, stopping now.");
                    std::process::exit(130);
                }
                tracing::info!("Stopping: finishing the batch in progress.");
                stop.cancel();
            }
        });
    }

    if args.demo {
        let options = DemoOptions {
            customers: args.demo_customers,
            rate: args.demo_rate,
        };
        let (s, stop) = (shared.clone(), shutdown.clone());
        tasks.spawn(async move {
            if let Err(error) = demo::publish(s, options, stop).await {
                tracing::error!(%error, "The demo publisher stopped.");
            }
        });
        tasks.spawn(demo::summarise(shared.clone(), shutdown.clone()));
    }

    let result = service::run(shared.clone(), shutdown.clone()).await;
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    drop(embedded);
    tracing::info!("Stopped.");
    result
}
