//! `allowly-server`: Allowly's HTTP front end and the `allowly` binary.
//!
//! It parses and authenticates requests, maps each endpoint onto one [`allowly_engine::Engine`]
//! call, and maps the answer (or the error) back to HTTP. It holds no business logic and no key
//! material. With `allowly-webhooks` (which sends the outgoing webhooks and whose worker
//! [`serve`] starts and stops) it is the only crate that speaks HTTP.
//!
//! # Running
//!
//! `allowly serve` starts everything on an empty machine: a RocksDB store in
//! `<data-dir>/db`, a signer child process (state in `<data-dir>/signer`, socket
//! `<data-dir>/run/signer.sock`), and the API on `--listen`. On first start it writes the
//! instance admin key to `<data-dir>/admin-token` (mode 0600, never overwritten). With
//! `--signer-socket` it uses a signer running as its own service instead. Started as root it
//! runs the signer as `--signer-user` and itself as `--user` (created if missing), so the front
//! end cannot read key material; started as anyone else it warns that keys are not isolated
//! (see [`isolation`]).
//!
//! | flag | environment | TOML key | default |
//! |---|---|---|---|
//! | `--config FILE` | `ALLOWLY_CONFIG` | — | none |
//! | `--data-dir DIR` | `ALLOWLY_DATA_DIR` | `data_dir` | `./allowly-data` |
//! | `--listen IP:PORT` | `ALLOWLY_LISTEN` | `listen` | `127.0.0.1:8080` |
//! | `--signer-socket PATH` | `ALLOWLY_SIGNER_SOCKET` | `signer_socket` | none (embedded signer) |
//! | `--signer-bin PATH` | `ALLOWLY_SIGNER_BIN` | `signer_bin` | next to `allowly`, else on `PATH` |
//! | `--user NAME` | `ALLOWLY_USER` | `user` | `allowly` (used only when started as root) |
//! | `--signer-user NAME` | `ALLOWLY_SIGNER_USER` | `signer_user` | `allowly-signer` (idem) |
//! | `--body-limit BYTES` | `ALLOWLY_BODY_LIMIT` | `body_limit` | 65536 |
//! | `--request-read-timeout-ms MS` | `ALLOWLY_REQUEST_READ_TIMEOUT_MS` | `request_read_timeout_ms` | 10000 |
//! | `--max-connections N` | `ALLOWLY_MAX_CONNECTIONS` | `max_connections` | 8192 |
//! | `--max-connections-per-address N` | `ALLOWLY_MAX_CONNECTIONS_PER_ADDRESS` | `max_connections_per_address` | 1024 |
//! | `--rate-limit-per-second N` | `ALLOWLY_RATE_LIMIT_PER_SECOND` | `rate_limit_per_second` | 0 (unlimited) |
//! | `--rate-limit-burst N` | `ALLOWLY_RATE_LIMIT_BURST` | `rate_limit_burst` | the per-second rate |
//! | `--metrics-token-file FILE` | `ALLOWLY_METRICS_TOKEN_FILE` | `metrics_token_file` | none (`/metrics` public) |
//! | `--webhook-base-backoff-ms MS` | `ALLOWLY_WEBHOOK_BASE_BACKOFF_MS` | `webhook_base_backoff_ms` | 5000 |
//! | `--webhook-max-backoff-ms MS` | `ALLOWLY_WEBHOOK_MAX_BACKOFF_MS` | `webhook_max_backoff_ms` | 3600000 |
//! | `--webhook-give-up-after-ms MS` | `ALLOWLY_WEBHOOK_GIVE_UP_AFTER_MS` | `webhook_give_up_after_ms` | 86400000 |
//! | `--webhook-attempt-timeout-ms MS` | `ALLOWLY_WEBHOOK_ATTEMPT_TIMEOUT_MS` | `webhook_attempt_timeout_ms` | 10000 |
//!
//! Precedence: flag > environment > file > default. Logging: `ALLOWLY_LOG` (env-filter syntax,
//! default `info`), to stderr. The first line on stdout is `listening on http://ADDR`
//! (`https://` with `--tls-cert-file`; useful with `--listen 127.0.0.1:0`). SIGHUP: read the
//! listener's TLS certificate and key again (without TLS: logged, nothing else). SIGTERM or SIGINT: stop accepting, drain requests in flight
//! (bounded), stop the engine, stop the webhook worker (attempts in flight finish, bounded), stop
//! the signer child, exit 0.
//!
//! # API conventions
//!
//! Errors are RFC 9457 problem documents with a stable `code` ([`problem`] has the table); every
//! response carries a `Request-Id` (the client's if it is 1..=128 of `[A-Za-z0-9._-]`, else a
//! generated one); bodies must be `application/json` within the body limit; request types reject
//! unknown fields; another workspace's objects are 404. The routes and who may call them are in
//! [`routes`] and [`auth`].
//!
//! # Modules
//!
//! [`admin_cli`] (`allowly workspace-key rotate`, `allowly admin-key rotate|revoke|reset`:
//! operator commands that ask the running server, or reset offline; their `http://` and
//! `https://` client is [`http_client`]), [`config`] (flags, env, file), [`backup`] (`POST /v1/admin/backup`, `allowly backup`, `allowly restore`), [`serve`] (start-up and shutdown order), [`isolation`]
//! (what happens when started as root: two users, privilege drop), [`signer_child`]
//! (the embedded signer, its supervisor and its root keeper), [`http`] (accept loop, request ids, graceful
//! drain), [`conn`] (read deadline, connection caps, idle eviction), [`ratelimit`] (per-API-key
//! rate limits), [`routes`] (routing table, access rules, dispatch), [`handlers`] (one function per route), [`extract`] (strict request reading),
//! [`auth`] (bearer keys and the access table), [`problem`] (errors → HTTP, once), [`metrics`].

pub mod admin_cli;
pub mod admin_token;
pub mod app;
pub mod auth;
pub mod backup;
pub mod config;
pub mod conn;
pub mod error;
pub mod extract;
pub mod forward;
pub mod handlers;
pub mod http;
pub mod http_client;
pub mod isolation;
pub mod layout;
pub mod metrics;
pub mod openapi;
pub mod problem;
pub mod ratelimit;
pub mod routes;
pub mod serve;
pub mod signer_child;
pub mod stream;
