//! A read model that is a table of aggregate states. Its projector folds each aggregate's events
//! with the domain's own `apply`, so the row is exactly the state the aggregate would load, and
//! stores it as JSON (`body`) with its version and the columns queries need ([`Indexed`]).
//!
//! A batch is applied with one read of the touched rows and one multi-row upsert, which is what
//! makes a rebuild of a million events take seconds rather than minutes.
//!
//! Live tables of published aggregates also hand the batch one change per applied event (the
//! state after that event, [`Outgoing`]), which the loop writes to the `outbox` in the same
//! transaction. A rebuild into a shadow table publishes nothing, so clients never see a change
//! twice.

use std::collections::HashMap;
use std::marker::PhantomData;

use async_trait::async_trait;
use cqrs_es::Aggregate;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sparc_store::{Database, RecordedEvent, StoreTx, on_backend};

use crate::outbox::Outgoing;
use crate::runner::{Projection, ProjectionError};
use crate::sql::{SqlColumn, SqlValue, bind_all};

/// An aggregate whose states form a read-model table.
pub trait Indexed: Aggregate + Clone {
    /// The table (and projection) name.
    const TABLE: &'static str;
    /// The query columns beside `id`, `version` and `body`, in the order of [`Indexed::columns`].
    const COLUMNS: &'static [&'static str];
    /// The query column values of this state.
    fn columns(&self) -> Vec<SqlValue>;
    /// Whether changes of this read model are pushed to clients (through the outbox).
    const PUBLISHED: bool = false;
    /// The one user allowed to see this state's changes (besides admins and auditors), or
    /// `None` when every signed-in user may. A change of the state moves that owner's cached
    /// lists (and the all-seeing ones), not other owners'.
    fn audience(&self) -> Option<uuid::Uuid> {
        None
    }
    /// The cell of `list_counts` this state is counted in, or `None` if no list shows it:
    /// list totals are sums of cells, kept in the transaction that writes the rows.
    fn tally(&self) -> Option<Tally> {
        None
    }
}

/// Where a state counts in its read model's list totals: per owner (and in the all-seeing
/// total), per group a list filters on, per status.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tally {
    /// The owner whose lists show it; `None`: only the all-seeing lists (a shared registry).
    pub owner: Option<uuid::Uuid>,
    /// The group a list may be narrowed to (a task's project, an agent's type).
    pub group: Option<String>,
    /// Its status.
    pub status: &'static str,
}

/// The `list_counts` owner of the all-seeing totals.
const EVERYONE: &str = "*";

impl Tally {
    /// The `(owner, group, status)` cells this state counts in.
    fn cells(&self) -> impl Iterator<Item = (String, String, &'static str)> + '_ {
        let group = self.group.clone().unwrap_or_default();
        let own = self.owner.map(|owner| owner.to_string());
        own.into_iter()
            .chain(std::iter::once(EVERYONE.to_owned()))
            .map(move |owner| (owner, group.clone(), self.status))
    }
}

/// A stored state and its version (the sequence of the last event applied).
#[derive(Debug, Clone, PartialEq)]
pub struct Row<A> {
    /// The aggregate state.
    pub state: A,
    /// The aggregate's version.
    pub version: i64,
}

/// The projection that keeps the table of `A` current.
pub struct StateTable<A> {
    name: String,
    table: String,
    publish: bool,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A: Indexed> StateTable<A> {
    /// The live projection writing `A::TABLE` (and the outbox, for published read models).
    pub fn new() -> Self {
        Self {
            name: A::TABLE.to_owned(),
            table: A::TABLE.to_owned(),
            publish: A::PUBLISHED,
            _aggregate: PhantomData,
        }
    }

    /// A rebuild of `A::TABLE` into the empty table `shadow`, under its own checkpoint `shadow`;
    /// it publishes nothing.
    pub fn rebuild_into(shadow: &str) -> Self {
        Self {
            name: shadow.to_owned(),
            table: shadow.to_owned(),
            publish: false,
            _aggregate: PhantomData,
        }
    }
}

impl<A: Indexed> Default for StateTable<A> {
    fn default() -> Self {
        Self::new()
    }
}

const ROWS_PER_STATEMENT: usize = 200;

fn decode<T: DeserializeOwned>(event: &RecordedEvent) -> Result<T, ProjectionError> {
    let payload = sparc_domain::upcasting::upcast_ref(
        &event.event_type,
        &event.event_version,
        &event.payload,
    );
    T::deserialize(payload.as_ref()).map_err(|source| ProjectionError::Payload {
        position: event.position,
        event_type: event.event_type.clone(),
        source,
    })
}

/// A stream's state as a batch leaves it.
struct Folded<A> {
    state: A,
    /// The version of the last event folded in.
    version: i64,
    /// The version the row had when read (0: no row yet); the row is written if it moved.
    read_at: i64,
    /// The state's JSON, when it was serialized for a change after the last event folded in:
    /// the row's body, not serialized a second time.
    body: Option<String>,
    /// Where the row counted when read (`None`: no row, or not counted).
    tally_before: Option<Tally>,
}

impl<A: Indexed> Folded<A> {
    fn new(state: A, version: i64) -> Self {
        Self {
            tally_before: (version > 0).then(|| state.tally()).flatten(),
            state,
            version,
            read_at: version,
            body: None,
        }
    }
}

fn serialize<A: Serialize>(state: &A) -> Result<String, sqlx::Error> {
    serde_json::to_string(state).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

fn parse_body<A: DeserializeOwned>(body: &str) -> Result<A, sqlx::Error> {
    sparc_store::json::parse_as(body).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

#[async_trait]
impl<A: Indexed + 'static> Projection for StateTable<A>
where
    A::Event: DeserializeOwned,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn concerns(&self, event: &RecordedEvent) -> bool {
        event.aggregate_type == A::TYPE
    }

    /// A state is folded from payloads alone.
    fn reads_metadata(&self) -> bool {
        false
    }

    async fn apply(
        &self,
        tx: &mut StoreTx,
        events: &[RecordedEvent],
        outgoing: &mut Outgoing,
    ) -> Result<(), ProjectionError> {
        let mine: Vec<&RecordedEvent> = events.iter().filter(|e| self.concerns(e)).collect();
        if mine.is_empty() {
            return Ok(());
        }
        // Only streams with an event past their first have a row to read: one whose first
        // event is in this batch has none yet (its row would have committed with a checkpoint
        // past that event). A batch of creations reads nothing.
        let mut ids: Vec<&str> = mine
            .iter()
            .filter(|e| e.sequence > 1)
            .map(|e| e.aggregate_id.as_str())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut states: HashMap<String, Folded<A>> = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let rows: Vec<(String, i64, String)> = match tx {
                StoreTx::Postgres(tx) => {
                    let sql = format!(
                        "SELECT id, version, body FROM {} WHERE id = ANY($1::text[])",
                        self.table
                    );
                    sqlx::query_as(&sql)
                        .bind(chunk)
                        .fetch_all(&mut **tx)
                        .await?
                }
                StoreTx::Sqlite(tx) => {
                    let placeholders: Vec<String> =
                        (1..=chunk.len()).map(|i| format!("${i}")).collect();
                    let sql = format!(
                        "SELECT id, version, body FROM {} WHERE id IN ({})",
                        self.table,
                        placeholders.join(", ")
                    );
                    let mut query = sqlx::query_as(&sql);
                    for id in chunk {
                        query = query.bind(*id);
                    }
                    query.fetch_all(&mut **tx).await?
                }
            };
            for (id, version, body) in rows {
                let state = parse_body(&body)?;
                states.insert(id, Folded::new(state, version));
            }
        }
        for event in mine {
            let entry = states
                .entry(event.aggregate_id.clone())
                .or_insert_with(|| Folded::new(A::default(), 0));
            if event.sequence <= entry.version {
                continue;
            }
            entry.state.apply(decode::<A::Event>(event)?);
            entry.version = event.sequence;
            entry.body = None;
            if self.publish {
                let body = serialize(&entry.state)?;
                let audience = entry.state.audience().map(|user| user.to_string());
                outgoing.push(A::TABLE, event, audience, body.clone());
                entry.body = Some(body);
            }
        }
        let changed: Vec<(&String, &Folded<A>)> = states
            .iter()
            .filter(|(_, s)| s.version > s.read_at)
            .collect();
        for chunk in changed.chunks(ROWS_PER_STATEMENT) {
            self.upsert(tx, chunk).await?;
        }
        let mut counts: HashMap<(String, String, &'static str), i64> = HashMap::new();
        for (_, folded) in &changed {
            let audience = folded.state.audience().map(|owner| owner.to_string());
            outgoing.touch(&self.table, audience.as_deref());
            let after = folded.state.tally();
            if after == folded.tally_before {
                continue;
            }
            for (tally, delta) in [(&folded.tally_before, -1), (&after, 1)] {
                for cell in tally.iter().flat_map(Tally::cells) {
                    *counts.entry(cell).or_default() += delta;
                }
            }
        }
        counts.retain(|_, delta| *delta != 0);
        add_counts(tx, &self.table, counts).await?;
        Ok(())
    }
}

/// Adds `deltas` to the `list_counts` cells of `table`, in one statement.
async fn add_counts(
    tx: &mut StoreTx,
    table: &str,
    deltas: HashMap<(String, String, &'static str), i64>,
) -> Result<(), sqlx::Error> {
    if deltas.is_empty() {
        return Ok(());
    }
    const UPSERT: &str = "INSERT INTO list_counts (read_model, owner, grp, status, n) {rows} \
        ON CONFLICT (read_model, owner, grp, status) DO UPDATE SET n = list_counts.n + excluded.n";
    match tx {
        StoreTx::Postgres(tx) => {
            let (mut owners, mut groups, mut statuses, mut ns) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for ((owner, group, status), n) in deltas {
                owners.push(owner);
                groups.push(group);
                statuses.push(status);
                ns.push(n);
            }
            let sql = UPSERT.replace(
                "{rows}",
                "SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[])",
            );
            sqlx::query(&sql)
                .bind(table)
                .bind(owners)
                .bind(groups)
                .bind(statuses)
                .bind(ns)
                .execute(&mut **tx)
                .await?;
        }
        StoreTx::Sqlite(tx) => {
            let deltas: Vec<_> = deltas.into_iter().collect();
            for chunk in deltas.chunks(ROWS_PER_STATEMENT) {
                let tuples: Vec<String> = (0..chunk.len())
                    .map(|i| {
                        format!(
                            "($1, ${}, ${}, ${}, ${})",
                            4 * i + 2,
                            4 * i + 3,
                            4 * i + 4,
                            4 * i + 5
                        )
                    })
                    .collect();
                let sql = UPSERT.replace("{rows}", &format!("VALUES {}", tuples.join(", ")));
                let mut query = sqlx::query(&sql).bind(table);
                for ((owner, group, status), n) in chunk {
                    query = query.bind(owner).bind(group).bind(*status).bind(*n);
                }
                query.execute(&mut **tx).await?;
            }
        }
    }
    Ok(())
}

impl<A: Indexed> StateTable<A> {
    /// Inserts or overwrites `rows`: on Postgres one statement over `unnest` of one array per
    /// column (the same text for any number of rows), on SQLite a `VALUES` list.
    async fn upsert(
        &self,
        tx: &mut StoreTx,
        rows: &[(&String, &Folded<A>)],
    ) -> Result<(), ProjectionError> {
        let mut values: Vec<Vec<SqlValue>> = Vec::with_capacity(rows.len());
        for (id, folded) in rows {
            let body = match &folded.body {
                Some(body) => body.clone(),
                None => serialize(&folded.state)?,
            };
            let mut row = Vec::with_capacity(3 + A::COLUMNS.len());
            row.push(SqlValue::Text(Some((*id).clone())));
            row.push(SqlValue::Int(Some(folded.version)));
            row.push(SqlValue::Text(Some(body)));
            row.extend(folded.state.columns());
            values.push(row);
        }
        let mut columns = vec!["id", "version", "body"];
        columns.extend_from_slice(A::COLUMNS);
        let updates: Vec<String> = columns[1..]
            .iter()
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        let upsert = format!(
            "INSERT INTO {} ({}) {{rows}} ON CONFLICT (id) DO UPDATE SET {}",
            self.table,
            columns.join(", "),
            updates.join(", ")
        );
        match tx {
            StoreTx::Postgres(tx) => {
                let arrays = SqlColumn::of_rows(values).ok_or_else(|| {
                    sqlx::Error::Encode(format!("{}: a column mixes types", self.table).into())
                })?;
                let unnest: Vec<String> = arrays
                    .iter()
                    .enumerate()
                    .map(|(i, array)| format!("${}::{}", i + 1, array.pg_array_type()))
                    .collect();
                let sql = upsert.replace(
                    "{rows}",
                    &format!("SELECT * FROM unnest({})", unnest.join(", ")),
                );
                let mut query = sqlx::query(&sql);
                for array in arrays {
                    query = match array {
                        SqlColumn::Text(values) => query.bind(values),
                        SqlColumn::Int(values) => query.bind(values),
                    };
                }
                query.execute(&mut **tx).await?;
            }
            StoreTx::Sqlite(tx) => {
                let width = columns.len();
                let tuples: Vec<String> = (0..values.len())
                    .map(|i| {
                        let params: Vec<String> =
                            (1..=width).map(|c| format!("${}", i * width + c)).collect();
                        format!("({})", params.join(", "))
                    })
                    .collect();
                let sql = upsert.replace("{rows}", &format!("VALUES {}", tuples.join(", ")));
                bind_all!(sqlx::query(&sql), values.iter().flatten())
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Ok(())
    }
}

/// Reads one state by id.
pub async fn get<A: Indexed>(db: &Database, id: &str) -> Result<Option<Row<A>>, sqlx::Error> {
    let sql = format!("SELECT version, body FROM {} WHERE id = $1", A::TABLE);
    let row: Option<(i64, String)> =
        on_backend!(Database db, pool => sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?);
    row.map(|(version, body)| {
        Ok(Row {
            state: parse_body(&body)?,
            version,
        })
    })
    .transpose()
}

/// The version of row `id` of the read model `table` (a read model's own table name, never
/// user text), if the row exists.
pub async fn version_of(db: &Database, table: &str, id: &str) -> Result<Option<i64>, sqlx::Error> {
    let sql = format!("SELECT version FROM {table} WHERE id = $1");
    Ok(
        on_backend!(Database db, pool => sqlx::query_scalar(&sql).bind(id).fetch_optional(pool).await?),
    )
}

/// How many rows of `A`'s table match `filter` (a SQL condition over its columns using `$1…`
/// for `params`), counting no further than `up_to`: a quota check needs to know only whether
/// the cap is reached, so a user far past it (a lowered cap) costs no more than one at it.
pub async fn count_up_to<A: Indexed>(
    db: &Database,
    filter: &str,
    params: &[SqlValue],
    up_to: i64,
) -> Result<i64, sqlx::Error> {
    let sql = format!(
        "SELECT COUNT(*) FROM (SELECT 1 FROM {} WHERE {filter} LIMIT ${}) AS counted",
        A::TABLE,
        params.len() + 1
    );
    let mut bound = params.to_vec();
    bound.push(SqlValue::Int(Some(up_to)));
    let (count,): (i64,) = on_backend!(Database db, pool => bind_all!(sqlx::query_as(&sql), &bound).fetch_one(pool).await?);
    Ok(count)
}

/// A filtered, ordered, paged selection of states: `filter` is a SQL condition over the
/// table's columns using `$1…` for `params`.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// The `WHERE` condition (`TRUE` when empty).
    pub filter: String,
    /// Its parameters.
    pub params: Vec<SqlValue>,
    /// The `ORDER BY` clause, from a fixed list of allowed orders (never user text).
    pub order_by: String,
    /// Page size.
    pub limit: i64,
    /// Page start.
    pub offset: i64,
}

/// How a list's total is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Total {
    /// Summed from the `list_counts` cells ([`Tally`]) of the owner (`None`: everyone's), the
    /// group (if narrowed to one) and the statuses: a few rows, however many the list has.
    Counted {
        /// Whose rows (`None`: everyone's).
        owner: Option<uuid::Uuid>,
        /// Only this group's.
        group: Option<String>,
        /// Which statuses.
        status: StatusFilter,
    },
    /// Counted over the matching rows (for filters the cells do not tell apart), through the
    /// index that serves the filter.
    Rows,
}

/// The statuses a counted total takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// Every status.
    Any,
    /// Only this one.
    Only(&'static str),
    /// All but this one (the deleted).
    Except(&'static str),
}

/// The total of the rows of `table` that `total` describes (see [`Total::Counted`]).
async fn counted(
    db: &Database,
    table: &str,
    owner: Option<uuid::Uuid>,
    group: Option<&str>,
    status: StatusFilter,
) -> Result<i64, sqlx::Error> {
    let mut sql = "SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM list_counts \
        WHERE read_model = $1 AND owner = $2"
        .to_owned();
    let mut params: Vec<SqlValue> = vec![
        table.to_owned().into(),
        owner
            .map_or_else(|| EVERYONE.to_owned(), |o| o.to_string())
            .into(),
    ];
    if let Some(group) = group {
        params.push(group.to_owned().into());
        sql.push_str(&format!(" AND grp = ${}", params.len()));
    }
    match status {
        StatusFilter::Any => {}
        StatusFilter::Only(status) => {
            params.push(status.to_owned().into());
            sql.push_str(&format!(" AND status = ${}", params.len()));
        }
        StatusFilter::Except(status) => {
            params.push(status.to_owned().into());
            sql.push_str(&format!(" AND status <> ${}", params.len()));
        }
    }
    Ok(
        on_backend!(Database db, pool => bind_all!(sqlx::query_scalar(&sql), &params).fetch_one(pool).await?),
    )
}

/// Reads a page of states and the total number matching the filter (counted over the rows).
pub async fn select<A: Indexed>(
    db: &Database,
    selection: &Selection,
) -> Result<(Vec<Row<A>>, i64), sqlx::Error> {
    select_with_total(db, selection, &Total::Rows).await
}

/// `selection`'s condition (`1 = 1` when empty).
fn filter_of(selection: &Selection) -> &str {
    if selection.filter.is_empty() {
        "1 = 1"
    } else {
        &selection.filter
    }
}

/// The statement selecting `columns` of `selection`'s page of `table`, and its parameters (the
/// selection's, then the limit and offset). The page's ids are found first, from the index that
/// serves the filter and order (a deep offset steps over index entries, not rows), and only
/// the page's rows are read.
fn page_query(table: &str, columns: &str, selection: &Selection) -> (String, Vec<SqlValue>) {
    let n = selection.params.len();
    let order = if selection.order_by.is_empty() {
        "id"
    } else {
        &selection.order_by
    };
    let sql = format!(
        "SELECT {columns} FROM {table} WHERE id IN \
         (SELECT id FROM {table} WHERE {} ORDER BY {order} LIMIT ${} OFFSET ${}) \
         ORDER BY {order}",
        filter_of(selection),
        n + 1,
        n + 2,
    );
    let mut params = selection.params.clone();
    params.push(SqlValue::Int(Some(selection.limit)));
    params.push(SqlValue::Int(Some(selection.offset)));
    (sql, params)
}

/// The rows of `selection`'s page alone, without a total (cursor paging, and lists that show
/// no count).
pub async fn select_page<A: Indexed>(
    db: &Database,
    selection: &Selection,
) -> Result<Vec<Row<A>>, sqlx::Error> {
    let (sql, params) = page_query(A::TABLE, "version, body", selection);
    let rows: Vec<(i64, String)> = on_backend!(Database db, pool => bind_all!(sqlx::query_as(&sql), &params).fetch_all(pool).await?);
    rows.into_iter()
        .map(|(version, body)| {
            Ok(Row {
                state: parse_body(&body)?,
                version,
            })
        })
        .collect()
}

/// [`select`], with the total taken as `total` says.
pub async fn select_with_total<A: Indexed>(
    db: &Database,
    selection: &Selection,
    total: &Total,
) -> Result<(Vec<Row<A>>, i64), sqlx::Error> {
    let rows = select_page(db, selection).await?;
    let total = match total {
        Total::Counted {
            owner,
            group,
            status,
        } => counted(db, A::TABLE, *owner, group.as_deref(), *status).await?,
        Total::Rows => {
            let sql = format!(
                "SELECT COUNT(*) FROM {} WHERE {}",
                A::TABLE,
                filter_of(selection)
            );
            on_backend!(Database db, pool => bind_all!(sqlx::query_scalar(&sql), &selection.params).fetch_one(pool).await?)
        }
    };
    Ok((rows, total))
}
