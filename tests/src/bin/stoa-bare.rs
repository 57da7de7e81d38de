//! `stoa-bare`: the limit a handler can reach on this machine — one axum route with no
//! middleware answering fixed bytes, in its own process like stoa-api. `stoa-load` starts
//! it with the bytes stoa-api answered for `/api/tags` and reports every scenario as a
//! share of it, beside the share of `/healthz`.
//!
//! ```text
//! stoa-bare --body-file tags.json --listen 127.0.0.1:0   # prints the bound address
//! ```

use std::path::PathBuf;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "A bare axum handler answering fixed bytes (the benchmark's limit)")]
struct Args {
    /// The response body (JSON).
    #[arg(long)]
    body_file: PathBuf,
    /// Address to listen on; the bound address is printed on the first line of stdout.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let body = axum::body::Bytes::from(std::fs::read(&args.body_file)?);
    let app = Router::new().route(
        "/api/tags",
        get(move || {
            let body = body.clone();
            async move { ([(CONTENT_TYPE, "application/json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    println!("{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
