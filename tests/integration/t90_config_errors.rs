use std::time::Duration;

use iroh::SecretKey;
use iroh_raft::{
    BuildError, ConfigError, KeyValueStore, RaftCluster, RaftClusterBuilder, actors::StartError,
};

fn base(dir: &std::path::Path) -> RaftClusterBuilder<KeyValueStore> {
    RaftCluster::builder()
        .node_id(1)
        .data_dir(dir)
        .state_machine(KeyValueStore::new())
}

async fn config_error(b: RaftClusterBuilder<KeyValueStore>) -> ConfigError {
    match b.build().await {
        Err(BuildError::Config(e)) => e,
        other => panic!("expected a config error, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configurations_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let other = SecretKey::generate().public();

    assert!(matches!(
        config_error(
            base(d)
                .heartbeat_interval(Duration::from_millis(100))
                .election_timeout(Duration::from_millis(100))
        )
        .await,
        ConfigError::ElectionTimeoutTooShort { .. }
    ));
    assert_eq!(
        config_error(base(d).node_id(0)).await,
        ConfigError::ZeroNodeId
    );
    assert_eq!(
        config_error(
            RaftCluster::<KeyValueStore>::builder()
                .data_dir(d)
                .state_machine(KeyValueStore::new())
        )
        .await,
        ConfigError::MissingNodeId
    );
    assert_eq!(
        config_error(
            RaftCluster::builder()
                .node_id(1)
                .state_machine(KeyValueStore::new())
        )
        .await,
        ConfigError::MissingDataDir
    );
    assert_eq!(
        config_error(
            RaftCluster::<KeyValueStore>::builder()
                .node_id(1)
                .data_dir(d)
        )
        .await,
        ConfigError::MissingStateMachine
    );
    assert!(matches!(
        config_error(base(d).peers([(2, "127.0.0.1:8081")])).await,
        ConfigError::PlainSocketAddr { .. }
    ));
    assert!(matches!(
        config_error(base(d).peers([(2, "not-a-key@127.0.0.1:8081")])).await,
        ConfigError::InvalidPeerAddress { .. }
    ));
    let a = format!("{other}@127.0.0.1:9000");
    let b = format!("{}@127.0.0.1:9001", SecretKey::generate().public());
    assert_eq!(
        config_error(base(d).peers([(2, a.as_str()), (2, b.as_str())])).await,
        ConfigError::DuplicateNodeId(2)
    );
    assert!(matches!(
        config_error(base(d).peers([(2, a.as_str()), (3, a.as_str())])).await,
        ConfigError::DuplicateEndpoint(_)
    ));
    assert!(matches!(
        config_error(base(d).peers([(1, a.as_str())])).await,
        ConfigError::SelfMismatch { node: 1, .. }
    ));
    assert!(matches!(
        config_error(base(d).bind_address("localhost")).await,
        ConfigError::InvalidBindAddress { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_data_dirs_are_typed_errors_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the data dir should be.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        base(&file).build().await,
        Err(BuildError::DataDir { .. })
    ));

    // A database file written by another program is refused, not reset.
    let data = dir.path().join("node");
    std::fs::create_dir_all(&data).unwrap();
    let db = data.join(iroh_raft::DB_FILE);
    std::fs::write(&db, vec![0x42; 4096]).unwrap();
    let err = base(&data).build().await.unwrap_err();
    assert!(
        matches!(err, BuildError::Start(StartError::Storage(_))),
        "{err:?}"
    );
    assert_eq!(std::fs::read(&db).unwrap(), vec![0x42; 4096]);
}
