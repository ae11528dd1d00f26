//! Lambda `ensure-repository`: see `replication::workflow::ensure_repository`.

use lambda_runtime::{run, service_fn, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let connections = functions::start()?;
    run(service_fn(|event: functions::RawEvent| async {
        functions::ensure_repository(&connections, functions::parse_event(event)?).await
    }))
    .await
}
