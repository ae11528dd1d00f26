//! Lambda `copy-blobs`: see `replication::workflow::copy_blobs`.

use lambda_runtime::{run, service_fn, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let connections = functions::start()?;
    run(service_fn(|event: functions::RawEvent| async {
        functions::copy_blobs(&connections, functions::parse_event(event)?).await
    }))
    .await
}
