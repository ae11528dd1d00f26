//! Lambda `coalesce-pushes`: serves `replication::steps::coalesce_pushes` (the push queue's
//! batches become a few runs).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    functions::serve_coalescer().await
}
