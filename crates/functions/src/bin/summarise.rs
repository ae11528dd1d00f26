//! Lambda `summarise`: see `replication::workflow::summarise`.

use lambda_runtime::{run, service_fn, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    run(service_fn(|event: functions::RawEvent| async {
        functions::summarise(functions::parse_event(event)?).await
    }))
    .await
}
