//! Lambda `put-manifests`: see `replication::workflow::put_manifests`.

use lambda_runtime::{run, service_fn, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let connections = functions::start()?;
    run(service_fn(|event: functions::RawEvent| async {
        functions::put_manifests(&connections, functions::parse_event(event)?).await
    }))
    .await
}
