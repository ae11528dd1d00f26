//! Lambda `summarise`: serves `replication::steps::Summarise`.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    functions::serve::<replication::steps::Summarise>().await
}
