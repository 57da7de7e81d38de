//! Statements that are safe behind a transaction-mode pooler (PgBouncer `pool_mode =
//! transaction`, CloudNativePG's Pooler, Zalando's connection pooler).
//!
//! Such a pooler lends a server connection to a client for one transaction only: between
//! transactions the next statement may reach another server. So, through one:
//! - every statement runs inside a transaction, which pins its server connection: a plain
//!   statement on [`super::Pool`] is wrapped in `BEGIN … COMMIT` (sqlx sends a statement
//!   with parameters as Parse/Describe/Sync then Bind/Execute/Sync, two exchanges the
//!   pooler could otherwise serve from two servers);
//! - every statement is unnamed ([`Unnamed`]), so no prepared statement outlives its
//!   transaction or meets a client's statement of the same name on a shared server (sqlx
//!   names its cached statements `sqlx_s_1`, `sqlx_s_2`, … on every connection). This holds
//!   on every PgBouncer version; 1.21's `max_prepared_statements` is not needed;
//! - session state is set per transaction: the statement timeout is a `SET LOCAL` in the
//!   `BEGIN` ([`begin_statement`]), since PgBouncer refuses the startup `options` parameter
//!   that carries it on a direct connection;
//! - what needs a session (`LISTEN`, the migrator's advisory lock) connects directly
//!   ([`super::Pool::session_options`]).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use sqlx::error::BoxDynError;
use sqlx::pool::MaybePoolConnection;
use sqlx::postgres::{PgArguments, PgQueryResult, PgRow, PgStatement, PgTypeInfo};
use sqlx::{AssertSqlSafe, Describe, Either, Error, Execute, Executor, Postgres};
use sqlx::{PgConnection, SqlSafeStr, SqlStr, Transaction};

/// The statement that opens every transaction behind a pooler: one round trip (sqlx sends a
/// custom `BEGIN` as a simple query, which may hold several statements). Shared (`Arc`):
/// the pool hands a clone to every statement, and a `SqlStr` made from a `String` would
/// copy the text at each clone.
pub fn begin_statement(statement_timeout: Duration) -> SqlStr {
    let sql: Arc<str> = format!(
        "BEGIN; SET LOCAL statement_timeout = {}",
        statement_timeout.as_millis()
    )
    .into();
    AssertSqlSafe(sql).into_sql_str()
}

/// Opens a transaction on `conn` with `begin` (from [`begin_statement`]).
pub async fn begin_on(
    conn: &mut PgConnection,
    begin: SqlStr,
) -> Result<Transaction<'_, Postgres>, Error> {
    Transaction::begin(MaybePoolConnection::Connection(conn), Some(begin)).await
}

/// A query sent as an unnamed statement: parsed, bound and run without a name the server
/// keeps, whatever the query asked for.
pub struct Unnamed<E>(pub E);

impl<'q, E: Execute<'q, Postgres>> Execute<'q, Postgres> for Unnamed<E> {
    fn sql(self) -> SqlStr {
        self.0.sql()
    }

    fn statement(&self) -> Option<&PgStatement> {
        self.0.statement()
    }

    fn take_arguments(&mut self) -> Result<Option<PgArguments>, BoxDynError> {
        self.0.take_arguments()
    }

    fn persistent(&self) -> bool {
        false
    }
}

/// Asked for a named prepared statement behind a pooler: it would outlive its transaction
/// on a server connection another client may get next. Nothing in the server prepares
/// statements explicitly; this keeps it so.
pub fn named_statement_refused() -> Error {
    Error::Configuration(
        "named prepared statements are not used behind a transaction pooler".into(),
    )
}

/// A transaction on the server's pool ([`super::Pool::begin`]). Behind a pooler, its
/// statements go unnamed and it began with the statement timeout set; otherwise it is
/// sqlx's transaction as it is. Dropped without `commit`, it rolls back.
pub struct Tx {
    inner: Transaction<'static, Postgres>,
    unnamed: bool,
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("unnamed", &self.unnamed)
            .finish()
    }
}

impl Tx {
    pub(super) fn new(inner: Transaction<'static, Postgres>, unnamed: bool) -> Self {
        Tx { inner, unnamed }
    }

    pub async fn commit(self) -> Result<(), Error> {
        self.inner.commit().await
    }

    pub async fn rollback(self) -> Result<(), Error> {
        self.inner.rollback().await
    }
}

impl<'t> Executor<'t> for &'t mut Tx {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, Error>>
    where
        't: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        if self.unnamed {
            (&mut *self.inner).fetch_many(Unnamed(query))
        } else {
            (&mut *self.inner).fetch_many(query)
        }
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Option<PgRow>, Error>>
    where
        't: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        if self.unnamed {
            (&mut *self.inner).fetch_optional(Unnamed(query))
        } else {
            (&mut *self.inner).fetch_optional(query)
        }
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement, Error>>
    where
        't: 'e,
    {
        if self.unnamed {
            return Box::pin(async { Err(named_statement_refused()) });
        }
        (&mut *self.inner).prepare_with(sql, parameters)
    }

    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, Result<Describe<Postgres>, Error>>
    where
        't: 'e,
    {
        (&mut *self.inner).describe(sql)
    }
}
