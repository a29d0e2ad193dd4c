// SQL for jobs, history and meta on PostgreSQL. Times are wall-clock milliseconds
// (bigint), as in SQLite, so a database imported from SQLite keeps them as they are.
// A batch is one statement (arrays unnested in data-modifying CTEs): atomic without a
// transaction's extra round trips.
#include "storage/pg_repository.hpp"

#include <boost/json.hpp>
#include <cerrno>
#include <cmath>
#include <csignal>
#include <fmt/format.h>
#include <map>
#include <random>
#include <set>
#include <tuple>

namespace klingd::storage {

namespace asio = boost::asio;
namespace json = boost::json;
using core::time_point;
using pg::param;

namespace {

// Forward migrations: entry i brings the schema from version i to i + 1. Only add:
// a node one version behind must still work on the newer schema.
const char* const migrations[] = {
    R"(
CREATE TABLE jobs (
  seq bigserial UNIQUE,
  id text PRIMARY KEY,
  model text NOT NULL,
  params text NOT NULL,
  priority integer NOT NULL DEFAULT 0,
  state text NOT NULL,
  request_id text,
  status_url text,
  response_url text,
  error text,
  outputs text NOT NULL DEFAULT '[]',
  result text,
  created_at bigint NOT NULL,
  updated_at bigint NOT NULL,
  submitted_at bigint,
  remote_done_at bigint,
  finished_at bigint,
  attempts integer NOT NULL DEFAULT 0,
  polls integer NOT NULL DEFAULT 0,
  source text NOT NULL DEFAULT '',
  claim_node text,
  claim_token text,
  claim_until bigint,
  cancel_requested boolean NOT NULL DEFAULT false
);
CREATE INDEX jobs_by_state_model ON jobs (state, model);
CREATE INDEX jobs_unfinished ON jobs (priority DESC, seq)
  WHERE state IN ('pending', 'submitting', 'queued', 'processing');
CREATE INDEX jobs_by_claim ON jobs (claim_token)
  WHERE state IN ('pending', 'submitting', 'queued', 'processing');
CREATE TABLE history (
  seq bigserial PRIMARY KEY,
  job_id text NOT NULL,
  at bigint NOT NULL,
  state text NOT NULL,
  note text NOT NULL,
  request_id text,
  node text
);
CREATE INDEX history_by_job ON history (job_id, seq);
CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE nodes (
  name text PRIMARY KEY,
  token text NOT NULL,
  host_id text NOT NULL,
  pid bigint NOT NULL,
  version text NOT NULL,
  requests_per_minute double precision NOT NULL,
  takeover_ms bigint NOT NULL,
  started_at bigint NOT NULL,
  heartbeat_at bigint NOT NULL,
  stopped_at bigint
);
CREATE TABLE budget (
  id integer PRIMARY KEY CHECK (id = 1),
  tat double precision NOT NULL,
  blocked_until bigint NOT NULL,
  allowed_rpm double precision,
  epoch bigint NOT NULL
);
INSERT INTO budget VALUES (1, 0, 0, NULL, 0);
)",
    // 1 -> 2: spend limits, shared by the nodes. One row per submission of a priced model.
    R"(
CREATE TABLE spend (
  job_id text NOT NULL,
  attempt bigint NOT NULL,
  model text NOT NULL,
  at bigint NOT NULL,
  micro bigint NOT NULL,
  refunded boolean NOT NULL DEFAULT false,
  node text,
  PRIMARY KEY (job_id, attempt)
);
CREATE INDEX spend_by_time ON spend (at);
-- How long after its claim a job caught in "submitting" waits before another node takes
-- it: its holder's POST may still be answered (api.request_timeout_s + 10 s, its own).
ALTER TABLE nodes ADD COLUMN submit_grace_ms bigint NOT NULL DEFAULT 40000;
)",
    // 2 -> 3: local files as inputs (a job's file:// inputs, checked at intake on the node
    // that holds the files, with their hosted URLs once uploaded), and the uploads of the
    // last day by content.
    R"(
CREATE TABLE inputs (
  job_id text NOT NULL,
  url text NOT NULL,
  path text NOT NULL,
  sha256 text NOT NULL,
  bytes bigint NOT NULL,
  mime text NOT NULL,
  hosted_url text,
  node text NOT NULL DEFAULT '',
  ord bigserial,
  PRIMARY KEY (job_id, url)
);
CREATE TABLE uploads (
  sha256 text PRIMARY KEY,
  hosted_url text NOT NULL,
  uploaded_at bigint NOT NULL
);
)",
    // 3 -> 4: completion hooks. The outbox: one row per event and target, written in the
    // commit of the job's final state, claimed by a node while it delivers.
    R"(
CREATE TABLE deliveries (
  seq bigserial UNIQUE,
  event_id text NOT NULL,
  target text NOT NULL,
  job_id text NOT NULL,
  type text NOT NULL,
  payload text NOT NULL,
  attempts integer NOT NULL DEFAULT 0,
  outcome text NOT NULL DEFAULT 'pending',
  last_error text,
  next_at bigint NOT NULL,
  claim_until bigint,
  claim_node text,
  node text NOT NULL DEFAULT '',
  PRIMARY KEY (event_id, target)
);
CREATE INDEX deliveries_by_job ON deliveries (job_id, seq);
CREATE INDEX deliveries_due ON deliveries (next_at) WHERE outcome = 'pending';
)",
    // 4 -> 5: housekeeping. A finished job pruned after jobs.keep_finished_days keeps its
    // row as a tombstone (state 'pruned', params emptied) with its content's hash, so that
    // its id stays unique for the life of the database.
    R"(
ALTER TABLE jobs ADD COLUMN content_sha256 text;
ALTER TABLE jobs ADD COLUMN pruned_at bigint;
)",
};

static_assert(std::size(migrations) == pg_repository::schema_version);

// Any number: the lock nodes take to migrate one at a time.
constexpr const char* migration_lock = "SELECT pg_advisory_xact_lock(7242001)";
// And the one they take to check the spend limits and count a submission, one at a time.
constexpr const char* spend_lock = "SELECT pg_advisory_xact_lock(7242002)";

constexpr const char* spend_sums =
    "SELECT coalesce(sum(CASE WHEN at >= $1::bigint THEN micro END), 0)::bigint, "
    "coalesce(sum(micro), 0)::bigint FROM spend WHERE at >= $2::bigint AND NOT refunded";

// The database's clock, in wall-clock milliseconds: claims and heartbeats are timed by it.
#define NOW_MS "(extract(epoch from now()) * 1000)::bigint"
#define UNFINISHED "('pending', 'submitting', 'queued', 'processing')"

// The node shown for a job: its holder while the claim lives, the finisher of a
// finished job, none while pending.
constexpr const char* job_columns =
    "id, model, priority, state, request_id, status_url, response_url, error, outputs, result, "
    "created_at, updated_at, submitted_at, remote_done_at, finished_at, attempts, polls, "
    "CASE WHEN state = 'pending' THEN NULL WHEN state NOT IN " UNFINISHED
    " OR claim_until >= " NOW_MS " THEN claim_node END";

std::int64_t ms(time_point t) {
    return t.time_since_epoch().count();
}
time_point at_ms(std::int64_t v) {
    return time_point(core::milliseconds(v));
}
param num(std::int64_t v) {
    return std::to_string(v);
}
param opt_num(const std::optional<time_point>& t) {
    return t ? num(ms(*t)) : std::nullopt;
}

core::job read_job(const pg::rows& r, int i, bool with_params) {
    core::job j;
    j.id = r.text(i, 0);
    j.model = r.text(i, 1);
    j.priority = static_cast<int>(r.int64(i, 2));
    j.state = core::parse_job_state(r.text(i, 3)).value_or(core::job_state::failed);
    j.request_id = r.opt_text(i, 4);
    j.status_url = r.opt_text(i, 5);
    j.response_url = r.opt_text(i, 6);
    j.error = r.opt_text(i, 7);
    j.outputs = parse_outputs(r.text(i, 8));
    j.result = r.opt_text(i, 9);
    j.created_at = at_ms(r.int64(i, 10));
    j.updated_at = at_ms(r.int64(i, 11));
    if (auto v = r.opt_int64(i, 12))
        j.submitted_at = at_ms(*v);
    if (auto v = r.opt_int64(i, 13))
        j.remote_done_at = at_ms(*v);
    if (auto v = r.opt_int64(i, 14))
        j.finished_at = at_ms(*v);
    j.attempts = static_cast<int>(r.int64(i, 15));
    j.polls = static_cast<int>(r.int64(i, 16));
    j.node = r.opt_text(i, 17);
    if (with_params)
        j.params = r.text(i, 18);
    if (j.result)
        j.phase = core::job_phase::download_due;
    return j;
}

} // namespace

pg_repository::pg_repository(std::string conninfo, std::chrono::milliseconds deadline,
                             std::string password)
    : pid_alive([](std::int64_t pid) {
          return pid > 0 && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM);
      }),
      db_(conninfo, deadline, password), heartbeat_db_(conninfo, deadline, password) {}

pg_repository::~pg_repository() {
    finish();
}

void pg_repository::finish() {
    db_.close();
    heartbeat_db_.close();
}

async_result<void> pg_repository::open() {
    auto turn = co_await lane_.wait_turn();
    std::string create = std::string("BEGIN; ") + migration_lock +
                         "; CREATE TABLE IF NOT EXISTS klingd_schema (version integer NOT NULL); "
                         "INSERT INTO klingd_schema SELECT 0 WHERE NOT EXISTS "
                         "(SELECT 1 FROM klingd_schema); COMMIT";
    auto made = co_await db_.script(std::move(create));
    if (!made) {
        db_.close();
        co_return made.error();
    }
    // One transaction, under the lock: read the version, apply what is missing.
    std::string begin = std::string("BEGIN; ") + migration_lock;
    if (auto b = co_await db_.script(std::move(begin)); !b) {
        db_.close();
        co_return b.error();
    }
    auto failed = [this](core::error e) {
        db_.close(); // the transaction goes with the connection
        return e;
    };
    std::string read = "SELECT version FROM klingd_schema";
    std::vector<param> none;
    auto v = co_await db_.query(std::move(read), std::move(none));
    if (!v)
        co_return failed(v.error());
    auto version = v->int64(0, 0);
    if (version > schema_version)
        co_return failed(core::error(
            core::errc::store_failed,
            fmt::format("PostgreSQL ({}): the database has schema version {}, newer than this "
                        "klingd understands ({}); refusing to use it (upgrade this node)",
                        db_.target(), version, schema_version)));
    for (; version < schema_version; ++version) {
        auto step = std::string(migrations[version]) +
                    fmt::format("; UPDATE klingd_schema SET version = {}", version + 1);
        if (auto m = co_await db_.script(std::move(step)); !m)
            co_return failed(m.error());
    }
    if (auto c = co_await db_.script(std::string("COMMIT")); !c)
        co_return failed(c.error());
    co_return core::result<void>{};
}

async_result<std::vector<insert_outcome>> pg_repository::insert(std::vector<core::job_spec> specs,
                                                                core::time_point now,
                                                                std::vector<std::string> sources) {
    auto turn = co_await lane_.wait_turn();
    std::vector<param> ids, models, params, priorities, from;
    std::vector<param> in_job, in_url, in_path, in_sha, in_bytes, in_mime;
    for (std::size_t i = 0; i < specs.size(); ++i) {
        for (auto& in : specs[i].inputs) {
            in_job.emplace_back(specs[i].id);
            in_url.emplace_back(in.url);
            in_path.emplace_back(in.path);
            in_sha.emplace_back(in.sha256);
            in_bytes.emplace_back(std::to_string(in.bytes));
            in_mime.emplace_back(in.mime);
        }
        ids.emplace_back(specs[i].id);
        models.emplace_back(specs[i].model);
        params.emplace_back(specs[i].params);
        priorities.emplace_back(std::to_string(specs[i].priority));
        from.emplace_back(i < sources.size() ? sources[i] : std::string());
    }
    std::string sql = R"(
WITH input AS (
  SELECT DISTINCT ON (id) id, model, params, priority, source, n
  FROM unnest($1::text[], $2::text[], $3::text[], $4::integer[], $5::text[])
       WITH ORDINALITY AS u(id, model, params, priority, source, n)
  ORDER BY id, n),
ins AS (
  INSERT INTO jobs (id, model, params, priority, state, created_at, updated_at, source)
  SELECT id, model, params, priority, 'pending', $6::bigint, $6::bigint, source
  FROM input ORDER BY n
  ON CONFLICT (id) DO NOTHING
  RETURNING id),
hist AS (
  INSERT INTO history (job_id, at, state, note, node)
  SELECT i.id, $6::bigint, 'pending',
         CASE WHEN i.source <> '' THEN 'accepted from ' || i.source ELSE 'accepted' END,
         $7::text
  FROM input i JOIN ins ON ins.id = i.id ORDER BY i.n),
inp AS (
  INSERT INTO inputs (job_id, url, path, sha256, bytes, mime, node)
  SELECT x.job_id, x.url, x.path, x.sha256, x.bytes, x.mime, coalesce($7::text, '')
  FROM unnest($8::text[], $9::text[], $10::text[], $11::text[], $12::bigint[], $13::text[])
       WITH ORDINALITY AS x(job_id, url, path, sha256, bytes, mime, n)
  JOIN ins ON ins.id = x.job_id ORDER BY x.n
  ON CONFLICT DO NOTHING)
SELECT id FROM ins)";
    std::vector<param> args{pg::array(ids),
                            pg::array(models),
                            pg::array(params),
                            pg::array(priorities),
                            pg::array(from),
                            num(ms(now)),
                            me_.name.empty() ? param{} : param{me_.name},
                            pg::array(in_job),
                            pg::array(in_url),
                            pg::array(in_path),
                            pg::array(in_sha),
                            pg::array(in_bytes),
                            pg::array(in_mime)};
    auto r = co_await db_.query(std::move(sql), std::move(args));
    if (!r)
        co_return r.error();
    std::set<std::string> inserted;
    for (int i = 0; i < r->size(); ++i)
        inserted.insert(r->text(i, 0));
    // What the other ids hold now, to tell the same content from a conflict.
    // A job's content, or for a pruned job's tombstone the hash of it.
    using content = std::tuple<std::string, std::string, std::int64_t>;
    std::map<std::string, content> stored;
    std::map<std::string, std::string> pruned; // id -> content_digest
    if (inserted.size() < specs.size()) {
        std::string read = "SELECT id, model, params, priority, state, content_sha256 FROM jobs "
                           "WHERE id = ANY($1::text[])";
        std::vector<param> a{pg::array(ids)};
        auto s = co_await db_.query(std::move(read), std::move(a));
        if (!s)
            co_return s.error();
        for (int i = 0; i < s->size(); ++i) {
            if (s->text(i, 4) == "pruned")
                pruned[s->text(i, 0)] = s->text(i, 5);
            else
                stored[s->text(i, 0)] = {s->text(i, 1), s->text(i, 2), s->int64(i, 3)};
        }
    }
    std::vector<insert_outcome> out;
    std::set<std::string> seen;
    for (auto& s : specs) {
        content mine{s.model, s.params, s.priority};
        if (inserted.count(s.id) && seen.insert(s.id).second) {
            stored[s.id] = mine; // a later spec of this batch with the same id compares to it
            out.push_back(insert_outcome::inserted);
            continue;
        }
        if (auto p = pruned.find(s.id); p != pruned.end()) {
            out.push_back(p->second == content_digest(s.model, s.params, s.priority)
                              ? insert_outcome::same_content
                              : insert_outcome::conflict);
            continue;
        }
        auto it = stored.find(s.id);
        if (it == stored.end())
            co_return core::error(core::errc::store_failed,
                                  fmt::format("job {} was neither inserted nor found", s.id));
        out.push_back(it->second == mine ? insert_outcome::same_content : insert_outcome::conflict);
    }
    co_return out;
}

async_result<std::vector<std::string>> pg_repository::save(std::vector<job_change> changes) {
    if (changes.empty())
        co_return std::vector<std::string>{};
    auto turn = co_await lane_.wait_turn();
    bool charged = false, refunded = false;
    for (auto& c : changes) {
        charged = charged || c.charge.has_value();
        refunded = refunded || c.refund_attempt.has_value();
    }
    if (!charged && !refunded)
        co_return co_await save_jobs(changes);
    // The limits' check, the count and the jobs' write: one transaction, under a lock
    // every node takes for it (the nodes' submissions are counted one at a time).
    // READ COMMITTED whatever the database's default: the sums read after the lock must
    // see the charge the lock's previous holder committed.
    if (auto b = co_await db_.script(std::string("BEGIN ISOLATION LEVEL READ COMMITTED")); !b)
        co_return b.error();
    auto r = co_await spend_and_save(changes, charged);
    if (!r) {
        co_await db_.script(std::string("ROLLBACK")); // or gone with a broken connection
        co_return r.error();
    }
    if (auto c = co_await db_.script(std::string("COMMIT")); !c)
        co_return c.error();
    co_return r;
}

async_result<std::vector<std::string>>
pg_repository::spend_and_save(const std::vector<job_change>& changes, bool charged) {
    if (charged) {
        std::vector<param> none;
        if (auto l = co_await db_.query(std::string(spend_lock), std::move(none)); !l)
            co_return l.error();
    }
    for (auto& c : changes) {
        if (!c.charge)
            continue;
        auto& ch = *c.charge;
        std::string sql =
            std::string(spend_sums) + " AND NOT (job_id = $3 AND attempt = $4::bigint)";
        std::vector<param> args{num(ms(ch.day_start)), num(ms(ch.month_start)), c.j.id,
                                num(ch.attempt)};
        auto sums = co_await db_.query(std::move(sql), std::move(args));
        if (!sums)
            co_return sums.error();
        auto today = sums->int64(0, 0), month = sums->int64(0, 1);
        if (ch.daily_limit > 0 && today + ch.micro > ch.daily_limit)
            co_return core::error(core::errc::spend_limit,
                                  fmt::format("daily_limit {} {}", today, month));
        if (ch.monthly_limit > 0 && month + ch.micro > ch.monthly_limit)
            co_return core::error(core::errc::spend_limit,
                                  fmt::format("monthly_limit {} {}", today, month));
        std::string put = R"(
INSERT INTO spend (job_id, attempt, model, at, micro, refunded, node)
VALUES ($1, $2::bigint, $3, $4::bigint, $5::bigint, false, $6)
ON CONFLICT (job_id, attempt) DO UPDATE SET model = excluded.model, at = excluded.at,
  micro = excluded.micro, refunded = false, node = excluded.node)";
        param node = me_.name.empty() ? param{} : param{me_.name};
        std::vector<param> values{c.j.id,         num(ch.attempt), ch.model,
                                  num(ms(ch.at)), num(ch.micro),   node};
        if (auto p = co_await db_.query(std::move(put), std::move(values)); !p)
            co_return p.error();
    }
    for (auto& c : changes) {
        if (!c.refund_attempt)
            continue;
        std::string sql =
            "UPDATE spend SET refunded = true WHERE job_id = $1 AND attempt = $2::bigint";
        std::vector<param> args{c.j.id, num(*c.refund_attempt)};
        if (auto u = co_await db_.query(std::move(sql), std::move(args)); !u)
            co_return u.error();
    }
    auto r = co_await save_jobs(changes);
    if (!r)
        co_return r.error();
    // A charged job this node could not write (not held): its charge goes with it.
    for (auto& c : changes)
        if (c.charge && std::find(r->begin(), r->end(), c.j.id) != r->end())
            co_return core::error(core::errc::claim_lost,
                                  "the job is no longer this node's: nothing was counted");
    co_return r;
}

async_result<spend_totals> pg_repository::spend(core::time_point day_start,
                                                core::time_point month_start) {
    auto turn = co_await lane_.wait_turn();
    std::vector<param> args{num(ms(day_start)), num(ms(month_start))};
    auto r = co_await db_.query(std::string(spend_sums), std::move(args));
    if (!r)
        co_return r.error();
    spend_totals out;
    out.today = r->int64(0, 0);
    out.month = r->int64(0, 1);
    co_return out;
}

async_result<std::vector<std::string>>
pg_repository::save_jobs(const std::vector<job_change>& changes) {
    // A job saved twice in one batch: its last state, and every history line in order.
    std::map<std::string, std::size_t> last;
    for (std::size_t i = 0; i < changes.size(); ++i)
        last[changes[i].j.id] = i;
    std::vector<param> id, state, request_id, status_url, response_url, error, outputs, result,
        updated, submitted, remote_done, finished, attempts, polls;
    std::vector<param> h_id, h_at, h_state, h_note, h_request;
    std::vector<param> d_job, d_state, d_type, d_target, d_payload, d_at;
    for (std::size_t i = 0; i < changes.size(); ++i) {
        auto& j = changes[i].j;
        if (auto& e = changes[i].event)
            for (auto& target : e->targets) {
                d_job.emplace_back(j.id);
                d_state.emplace_back(e->state);
                d_type.emplace_back(e->type);
                d_target.emplace_back(target);
                d_payload.emplace_back(e->payload);
                d_at.push_back(num(ms(e->at)));
            }
        for (auto& h : changes[i].history) {
            h_id.emplace_back(j.id);
            h_at.push_back(num(ms(h.at)));
            h_state.emplace_back(h.state);
            h_note.emplace_back(h.note);
            h_request.push_back(h.request_id);
        }
        if (last[j.id] != i)
            continue;
        id.emplace_back(j.id);
        state.emplace_back(std::string(core::to_string(j.state)));
        request_id.push_back(j.request_id);
        status_url.push_back(j.status_url);
        response_url.push_back(j.response_url);
        error.push_back(j.error);
        outputs.emplace_back(outputs_json(j.outputs));
        result.push_back(j.result);
        updated.push_back(num(ms(j.updated_at)));
        submitted.push_back(opt_num(j.submitted_at));
        remote_done.push_back(opt_num(j.remote_done_at));
        finished.push_back(opt_num(j.finished_at));
        attempts.push_back(num(j.attempts));
        polls.push_back(num(j.polls));
    }
    // In a cluster ($20: this node's token) only the jobs it holds are written, and the
    // history of those; the others are named in the answer.
    std::string sql = R"(
WITH u AS (
  SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                       $7::text[], $8::text[], $9::bigint[], $10::bigint[], $11::bigint[],
                       $12::bigint[], $13::integer[], $14::integer[])
         AS u(id, state, request_id, status_url, response_url, error, outputs, result,
              updated_at, submitted_at, remote_done_at, finished_at, attempts, polls)),
upd AS (
  UPDATE jobs j SET state = u.state, request_id = u.request_id, status_url = u.status_url,
    response_url = u.response_url, error = u.error, outputs = u.outputs, result = u.result,
    updated_at = u.updated_at, submitted_at = u.submitted_at, remote_done_at = u.remote_done_at,
    finished_at = u.finished_at, attempts = u.attempts, polls = u.polls,
    cancel_requested = j.cancel_requested AND u.state = 'pending'
  FROM u WHERE j.id = u.id AND j.state <> 'pruned'
    AND ($20::text IS NULL
         OR (j.claim_token = $20::text
             AND (u.state <> 'submitting' OR j.claim_until >=
                  (extract(epoch from clock_timestamp()) * 1000)::bigint + $22::bigint)))
  RETURNING j.id),
h AS (
  INSERT INTO history (job_id, at, state, note, request_id, node)
  SELECT job_id, at, state, note, request_id, $21::text
  FROM unnest($15::text[], $16::bigint[], $17::text[], $18::text[], $19::text[])
       WITH ORDINALITY AS h(job_id, at, state, note, request_id, n)
  WHERE $20::text IS NULL OR job_id IN (SELECT id FROM upd)
  ORDER BY n),
d AS (
  INSERT INTO deliveries (event_id, target, job_id, type, payload, next_at, node)
  SELECT x.job_id || '-' || (1 + (SELECT count(DISTINCT y.event_id) FROM deliveries y
                                  WHERE y.job_id = x.job_id)) || '-' || x.state,
         x.target, x.job_id, x.type, x.payload, x.at, coalesce($21::text, '')
  FROM unnest($23::text[], $24::text[], $25::text[], $26::text[], $27::text[], $28::bigint[])
       WITH ORDINALITY AS x(job_id, state, type, target, payload, at, n)
  WHERE ($20::text IS NULL OR x.job_id IN (SELECT id FROM upd))
    -- the same event written again (a commit whose answer was lost, replayed): once
    AND NOT EXISTS (SELECT 1 FROM deliveries z WHERE z.job_id = x.job_id
                    AND z.payload = x.payload)
  ORDER BY x.n
  ON CONFLICT DO NOTHING)
SELECT u.id, j.claim_token = $20::text AND j.state <> 'pruned' FROM u JOIN jobs j ON j.id = u.id
WHERE $20::text IS NOT NULL AND u.id NOT IN (SELECT id FROM upd))";
    param token = me_.name.empty() ? param{} : param{token_};
    param node = me_.name.empty() ? param{} : param{me_.name};
    std::vector<param> args{pg::array(id),
                            pg::array(state),
                            pg::array(request_id),
                            pg::array(status_url),
                            pg::array(response_url),
                            pg::array(error),
                            pg::array(outputs),
                            pg::array(result),
                            pg::array(updated),
                            pg::array(submitted),
                            pg::array(remote_done),
                            pg::array(finished),
                            pg::array(attempts),
                            pg::array(polls),
                            pg::array(h_id),
                            pg::array(h_at),
                            pg::array(h_state),
                            pg::array(h_note),
                            pg::array(h_request),
                            token,
                            node,
                            num(me_.submit_margin.count()),
                            pg::array(d_job),
                            pg::array(d_state),
                            pg::array(d_type),
                            pg::array(d_target),
                            pg::array(d_payload),
                            pg::array(d_at)};
    auto r = co_await db_.query(std::move(sql), std::move(args));
    if (!r)
        co_return r.error();
    std::vector<std::string> not_held;
    bool too_short = false;
    for (int i = 0; i < r->size(); ++i) {
        if (r->text(i, 1) == "t")
            too_short = true; // still ours: "submitting" with too little of the claim left
        else
            not_held.push_back(r->text(i, 0));
    }
    if (too_short && not_held.empty())
        co_return core::error(core::errc::store_busy,
                              "this node's claim ends too soon to send a submit under it; "
                              "it is tried again once the heartbeat has renewed it");
    co_return not_held;
}

async_result<std::optional<core::job>> pg_repository::get(std::string id) {
    auto turn = co_await lane_.wait_turn();
    std::string sql =
        fmt::format("SELECT {}, params FROM jobs WHERE id = $1 AND state <> 'pruned'", job_columns);
    std::vector<param> args{std::move(id)};
    auto r = co_await db_.query(std::move(sql), std::move(args));
    if (!r)
        co_return r.error();
    if (r->size() == 0)
        co_return std::optional<core::job>{};
    co_return std::optional<core::job>(read_job(*r, 0, true));
}

async_result<std::vector<core::job>> pg_repository::list(job_filter f) {
    auto turn = co_await lane_.wait_turn();
    std::string sql = fmt::format("SELECT {} FROM jobs WHERE state <> 'pruned'", job_columns);
    std::vector<param> args;
    if (f.state) {
        args.emplace_back(std::string(core::to_string(*f.state)));
        sql += fmt::format(" AND state = ${}", args.size());
    }
    if (f.model) {
        args.emplace_back(*f.model);
        sql += fmt::format(" AND model = ${}", args.size());
    }
    if (f.after) {
        args.emplace_back(*f.after);
        sql += fmt::format(" AND seq > (SELECT seq FROM jobs WHERE id = ${})", args.size());
    }
    args.push_back(num(static_cast<std::int64_t>(f.limit)));
    sql += fmt::format(" ORDER BY seq LIMIT ${}", args.size());
    auto r = co_await db_.query(std::move(sql), std::move(args));
    if (!r)
        co_return r.error();
    std::vector<core::job> out;
    out.reserve(static_cast<std::size_t>(r->size()));
    for (int i = 0; i < r->size(); ++i)
        out.push_back(read_job(*r, i, false));
    co_return out;
}

async_result<std::vector<core::job>> pg_repository::unfinished() {
    auto turn = co_await lane_.wait_turn();
    std::string sql =
        fmt::format("SELECT {}, CASE WHEN state IN ('pending','submitting') THEN params ELSE '' "
                    "END FROM jobs WHERE state IN ('pending','submitting','queued','processing') "
                    "ORDER BY seq",
                    job_columns);
    std::vector<param> none;
    auto r = co_await db_.query(std::move(sql), std::move(none));
    if (!r)
        co_return r.error();
    std::vector<core::job> out;
    out.reserve(static_cast<std::size_t>(r->size()));
    for (int i = 0; i < r->size(); ++i)
        out.push_back(read_job(*r, i, true));
    co_return out;
}

async_result<std::string> pg_repository::params_of(std::string id) {
    auto turn = co_await lane_.wait_turn();
    std::string sql = "SELECT params FROM jobs WHERE id = $1";
    std::vector<param> args{std::move(id)};
    auto r = co_await db_.query(std::move(sql), std::move(args));
    if (!r)
        co_return r.error();
    co_return r->size() ? r->text(0, 0) : std::string();
}

async_result<std::vector<history_entry>> pg_repository::history(std::string id) {
    auto turn = co_await lane_.wait_turn();
    std::string sql =
        "SELECT at, state, note, request_id FROM history WHERE job_id = $1 ORDER BY seq";
    std::vector<param> args{std::move(id)};
    auto r = co_await db_.query(std::move(sql), std::move(args));
    if (!r)
        co_return r.error();
    std::vector<history_entry> out;
    for (int i = 0; i < r->size(); ++i)
        out.push_back({at_ms(r->int64(i, 0)), r->text(i, 1), r->text(i, 2), r->opt_text(i, 3)});
    co_return out;
}

async_result<state_model_counts> pg_repository::counts() {
    auto turn = co_await lane_.wait_turn();
    std::string sql = "SELECT state, model, count(*) FROM jobs GROUP BY state, model";
    std::vector<param> none;
    auto r = co_await db_.query(std::move(sql), std::move(none));
    if (!r)
        co_return r.error();
    state_model_counts out;
    for (int i = 0; i < r->size(); ++i)
        out[{r->text(i, 0), r->text(i, 1)}] = r->int64(i, 2);
    co_return out;
}

async_result<std::vector<double>> pg_repository::recent_durations(std::string model, int n) {
    auto turn = co_await lane_.wait_turn();
    std::string sql =
        "SELECT (remote_done_at - submitted_at) / 1000.0 FROM jobs WHERE model = $1 AND state = "
        "'completed' AND remote_done_at IS NOT NULL AND submitted_at IS NOT NULL "
        "ORDER BY finished_at DESC LIMIT $2";
    std::vector<param> args{std::move(model), num(n)};
    auto r = co_await db_.query(std::move(sql), std::move(args));
    if (!r)
        co_return r.error();
    std::vector<double> out;
    for (int i = 0; i < r->size(); ++i)
        out.push_back(r->real(i, 0));
    co_return out;
}

async_result<std::optional<std::string>> pg_repository::meta(std::string key) {
    auto turn = co_await lane_.wait_turn();
    std::string sql = "SELECT value FROM meta WHERE key = $1";
    std::vector<param> args{std::move(key)};
    auto r = co_await db_.query(std::move(sql), std::move(args));
    if (!r)
        co_return r.error();
    if (r->size() == 0)
        co_return std::optional<std::string>{};
    co_return std::optional<std::string>(r->text(0, 0));
}

async_result<std::vector<core::local_input>> pg_repository::inputs_of(std::string id) {
    auto turn = co_await lane_.wait_turn();
    std::string sql = "SELECT url, path, sha256, bytes, mime, hosted_url FROM inputs "
                      "WHERE job_id = $1 ORDER BY ord";
    std::vector<param> args{std::move(id)};
    auto r = co_await db_.query(std::move(sql), std::move(args));
    if (!r)
        co_return r.error();
    std::vector<core::local_input> out;
    for (int i = 0; i < r->size(); ++i)
        out.push_back({r->text(i, 0), r->text(i, 1), r->text(i, 2), r->int64(i, 3), r->text(i, 4),
                       r->opt_text(i, 5)});
    co_return out;
}

async_result<void> pg_repository::record_upload(std::string id, std::string url, std::string sha256,
                                                std::string hosted, core::time_point at,
                                                bool fresh) {
    auto turn = co_await lane_.wait_turn();
    std::string sql = R"(
WITH u AS (UPDATE inputs SET hosted_url = $3 WHERE job_id = $1 AND url = $2 RETURNING 1)
INSERT INTO uploads (sha256, hosted_url, uploaded_at)
SELECT $4, $3, $5::bigint WHERE $6::boolean
ON CONFLICT (sha256) DO UPDATE SET hosted_url = EXCLUDED.hosted_url,
  uploaded_at = EXCLUDED.uploaded_at)";
    std::vector<param> args{std::move(id),     std::move(url),
                            std::move(hosted), std::move(sha256),
                            num(ms(at)),       std::string(fresh ? "true" : "false")};
    auto r = co_await db_.query(std::move(sql), std::move(args));
    if (!r)
        co_return r.error();
    co_return core::result<void>{};
}

async_result<std::int64_t> pg_repository::prune(core::time_point finished_before,
                                                core::time_point now, std::size_t limit) {
    auto turn = co_await lane_.wait_turn();
    // One statement: the rows taken are locked (another node pruning at once skips them),
    // each becomes a tombstone with the hash of its content (as storage::content_digest
    // makes it), and what belonged to it goes.
    std::string sql = R"(
WITH picked AS (
  SELECT id FROM jobs
  WHERE state IN ('completed', 'failed', 'expired', 'cancelled')
    AND coalesce(finished_at, updated_at) < $1::bigint
    AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.job_id = jobs.id AND d.outcome = 'pending')
  ORDER BY seq LIMIT $2::bigint
  FOR UPDATE SKIP LOCKED),
tomb AS (
  UPDATE jobs j SET state = 'pruned', params = '', result = NULL, outputs = '[]', error = NULL,
         status_url = NULL, response_url = NULL, pruned_at = $3::bigint,
         content_sha256 = encode(sha256(convert_to(
             octet_length(j.model) || ':' || j.model || ':' || octet_length(j.params) || ':' ||
             j.params || ':' || j.priority, 'UTF8')), 'hex')
  FROM picked WHERE j.id = picked.id
  RETURNING j.id),
h AS (DELETE FROM history WHERE job_id IN (SELECT id FROM tomb)),
i AS (DELETE FROM inputs WHERE job_id IN (SELECT id FROM tomb)),
d AS (DELETE FROM deliveries WHERE job_id IN (SELECT id FROM tomb)),
u AS (DELETE FROM uploads WHERE uploaded_at < $4::bigint)
SELECT count(*) FROM tomb)";
    std::vector<param> args{num(ms(finished_before)), num(static_cast<std::int64_t>(limit)),
                            num(ms(now)), num(ms(now - std::chrono::hours(48)))};
    auto r = co_await db_.query(std::move(sql), std::move(args));
    if (!r)
        co_return r.error();
    co_return r->int64(0, 0);
}

async_result<std::optional<std::string>> pg_repository::cached_upload(std::string sha256,
                                                                      core::time_point since) {
    auto turn = co_await lane_.wait_turn();
    std::string sql =
        "SELECT hosted_url FROM uploads WHERE sha256 = $1 AND uploaded_at >= $2::bigint";
    std::vector<param> args{std::move(sha256), num(ms(since))};
    auto r = co_await db_.query(std::move(sql), std::move(args));
    if (!r)
        co_return r.error();
    if (r->size() == 0)
        co_return std::optional<std::string>{};
    co_return std::optional<std::string>(r->text(0, 0));
}

namespace {
constexpr const char* delivery_columns =
    "event_id, target, job_id, type, payload, attempts, outcome, last_error, next_at, node";
hook_delivery read_delivery(const pg::rows& r, int i) {
    hook_delivery d;
    d.event_id = r.text(i, 0);
    d.target = r.text(i, 1);
    d.job_id = r.text(i, 2);
    d.type = r.text(i, 3);
    d.payload = r.text(i, 4);
    d.attempts = static_cast<int>(r.int64(i, 5));
    d.outcome = r.text(i, 6);
    d.last_error = r.opt_text(i, 7);
    d.next_at = at_ms(r.int64(i, 8));
    d.node = r.text(i, 9);
    return d;
}
} // namespace

async_result<std::vector<hook_delivery>>
pg_repository::take_due_deliveries(core::time_point now, core::time_point claim_until,
                                   std::string target, std::size_t limit) {
    // Timed by the database's clock, as job claims are: the nodes' clocks may differ.
    auto turn = co_await lane_.wait_turn();
    std::string sql = fmt::format(R"(
UPDATE deliveries SET claim_until = )" NOW_MS R"( + $1::bigint,
  claim_node = coalesce($3::text, ''), attempts = attempts + 1
WHERE seq IN (
  SELECT seq FROM deliveries
  WHERE outcome = 'pending' AND next_at <= )" NOW_MS R"(
    AND (claim_until IS NULL OR claim_until < )" NOW_MS R"()
    AND target = $4 AND (target = 'webhook' OR node = coalesce($3::text, ''))
  ORDER BY next_at LIMIT $2::bigint FOR UPDATE SKIP LOCKED)
RETURNING {})",
                                  delivery_columns);
    std::vector<param> args{num((claim_until - now).count()), num(static_cast<std::int64_t>(limit)),
                            me_.name.empty() ? param{} : param{me_.name}, std::move(target)};
    auto r = co_await db_.query(std::move(sql), std::move(args));
    if (!r)
        co_return r.error();
    std::vector<hook_delivery> out;
    for (int i = 0; i < r->size(); ++i)
        out.push_back(read_delivery(*r, i));
    co_return out;
}

async_result<void> pg_repository::finish_delivery(hook_delivery d) {
    auto turn = co_await lane_.wait_turn();
    std::string sql = "UPDATE deliveries SET attempts = $3::integer, outcome = $4, last_error = "
                      "$5, next_at = $6::bigint, claim_until = NULL, claim_node = NULL "
                      "WHERE event_id = $1 AND target = $2 AND claim_node = coalesce($7::text, '')";
    // Only while this node still holds it: one that took it after this node's claim
    // lapsed is not overwritten.
    std::vector<param> args{d.event_id,
                            d.target,
                            num(d.attempts),
                            d.outcome,
                            d.last_error ? param{*d.last_error} : param{},
                            num(ms(d.next_at)),
                            me_.name.empty() ? param{} : param{me_.name}};
    auto r = co_await db_.query(std::move(sql), std::move(args));
    if (!r)
        co_return r.error();
    co_return core::result<void>{};
}

async_result<std::vector<hook_delivery>> pg_repository::deliveries_of(std::string job_id) {
    auto turn = co_await lane_.wait_turn();
    std::string sql =
        fmt::format("SELECT {} FROM deliveries WHERE job_id = $1 ORDER BY seq", delivery_columns);
    std::vector<param> args{std::move(job_id)};
    auto r = co_await db_.query(std::move(sql), std::move(args));
    if (!r)
        co_return r.error();
    std::vector<hook_delivery> out;
    for (int i = 0; i < r->size(); ++i)
        out.push_back(read_delivery(*r, i));
    co_return out;
}

async_result<std::map<std::string, std::int64_t>> pg_repository::delivery_counts() {
    auto turn = co_await lane_.wait_turn();
    std::string sql = "SELECT outcome, count(*) FROM deliveries GROUP BY outcome";
    std::vector<param> none;
    auto r = co_await db_.query(std::move(sql), std::move(none));
    if (!r)
        co_return r.error();
    std::map<std::string, std::int64_t> out;
    for (int i = 0; i < r->size(); ++i)
        out[r->text(i, 0)] = r->int64(i, 1);
    co_return out;
}

async_result<void> pg_repository::release_deliveries() {
    auto turn = co_await lane_.wait_turn();
    std::string sql = "UPDATE deliveries SET claim_until = NULL, claim_node = NULL "
                      "WHERE claim_node = $1";
    std::vector<param> args{me_.name};
    auto r = co_await db_.query(std::move(sql), std::move(args));
    if (!r)
        co_return r.error();
    co_return core::result<void>{};
}

async_result<void> pg_repository::set_meta(std::string key, std::string value) {
    auto turn = co_await lane_.wait_turn();
    std::string sql = "INSERT INTO meta (key, value) VALUES ($1, $2) "
                      "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value";
    std::vector<param> args{std::move(key), std::move(value)};
    auto r = co_await db_.query(std::move(sql), std::move(args));
    if (!r)
        co_return r.error();
    co_return core::result<void>{};
}

} // namespace klingd::storage

namespace klingd::storage {

namespace {

std::string random_token() {
    std::random_device rd;
    return fmt::format("{:016x}{:016x}", (std::uint64_t{rd()} << 32) | rd(),
                       (std::uint64_t{rd()} << 32) | rd());
}
} // namespace

async_result<lease> pg_repository::join(node_identity me) {
    auto turn = co_await heartbeat_lane_.wait_turn();
    auto takeover = num(me.takeover.count());
    std::string read = "SELECT token, host_id, pid, heartbeat_at, stopped_at IS NOT NULL, "
                       "takeover_ms, " NOW_MS " FROM nodes WHERE name = $1";
    std::vector<param> a1{me.name};
    auto seen = co_await heartbeat_db_.query(std::move(read), std::move(a1));
    if (!seen)
        co_return seen.error();
    std::string previous; // the token of the name's last holder, if it may be taken over
    if (seen->size() > 0) {
        previous = seen->text(0, 0);
        auto host = seen->text(0, 1);
        auto pid = seen->int64(0, 2);
        auto beat = seen->int64(0, 3);
        bool stopped = seen->text(0, 4) == "t";
        auto db_now = seen->int64(0, 6);
        bool silent = beat + seen->int64(0, 5) < db_now;
        bool dead_here = host == me.host_id && pid != me.pid && pid_alive &&
                         !pid_alive(static_cast<std::int64_t>(pid));
        if (!stopped && !silent && !dead_here)
            co_return core::error(
                core::errc::node_name_taken,
                fmt::format("node name \"{}\" is held by a live node ({} process {}, last "
                            "heartbeat {:.1f} s ago): give this host another cluster.node, or "
                            "stop the other one",
                            me.name, host == me.host_id ? "this host's" : "another host's", pid,
                            (db_now - beat) / 1000.0));
    }
    auto token = random_token();
    std::string take = R"(
WITH up AS (
  INSERT INTO nodes AS n (name, token, host_id, pid, version, requests_per_minute, takeover_ms,
                          started_at, heartbeat_at, stopped_at, submit_grace_ms)
  VALUES ($1, $2, $3, $4, $5, $6, $7, )" NOW_MS ", " NOW_MS R"(, NULL, $9::bigint)
  ON CONFLICT (name) DO UPDATE SET token = EXCLUDED.token, host_id = EXCLUDED.host_id,
    pid = EXCLUDED.pid, version = EXCLUDED.version, submit_grace_ms = EXCLUDED.submit_grace_ms,
    requests_per_minute = EXCLUDED.requests_per_minute, takeover_ms = EXCLUDED.takeover_ms,
    started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at, stopped_at = NULL
  WHERE n.token = $8
  RETURNING 1),
freed AS (
  UPDATE jobs SET claim_until = NULL
  WHERE claim_token = $8 AND state IN )" UNFINISHED R"( AND EXISTS (SELECT 1 FROM up))
SELECT (SELECT count(*) FROM up), )" NOW_MS;
    std::vector<param> a2{me.name,     token,      me.host_id,
                          num(me.pid), me.version, fmt::format("{}", me.requests_per_minute),
                          takeover,    previous,   num(me.submit_grace.count())};
    auto took = co_await heartbeat_db_.query(std::move(take), std::move(a2));
    if (!took)
        co_return took.error();
    if (took->int64(0, 0) != 1)
        co_return core::error(core::errc::node_name_taken,
                              fmt::format("node name \"{}\" was taken by another node while this "
                                          "one joined: give this host another cluster.node",
                                          me.name));
    me_ = std::move(me);
    token_ = std::move(token);
    auto db_now = at_ms(took->int64(0, 1));
    co_return lease{db_now, db_now + me_.takeover};
}

async_result<claimed> pg_repository::claim(std::size_t max_pending, std::size_t max_orphans) {
    auto turn = co_await heartbeat_lane_.wait_turn();
    std::string sql = fmt::format(R"(
WITH o AS (
  SELECT id FROM jobs
  WHERE state IN ('submitting', 'queued', 'processing')
    AND (claim_until IS NULL
         OR claim_until + CASE WHEN state = 'submitting' THEN greatest($6::bigint,
              coalesce((SELECT n.submit_grace_ms FROM nodes n WHERE n.name = jobs.claim_node), 0))
            ELSE 0 END < )" NOW_MS R"()
  ORDER BY seq LIMIT $4 FOR UPDATE SKIP LOCKED),
p AS (
  SELECT id FROM jobs
  WHERE state = 'pending' AND (claim_until IS NULL OR claim_until < )" NOW_MS R"()
    AND NOT EXISTS (SELECT 1 FROM inputs i WHERE i.job_id = jobs.id
                    AND i.hosted_url IS NULL AND i.node <> $1)
  ORDER BY priority DESC, seq LIMIT $5 FOR UPDATE SKIP LOCKED),
u AS (
  UPDATE jobs SET claim_node = $1, claim_token = $2, claim_until = )" NOW_MS R"( + $3
  WHERE id IN (SELECT id FROM o UNION ALL SELECT id FROM p)
  RETURNING {}, CASE WHEN state IN ('pending', 'submitting') THEN params ELSE '' END, seq)
SELECT * FROM u ORDER BY seq)",
                                  job_columns);
    std::vector<param> args{me_.name,
                            token_,
                            num(me_.takeover.count()),
                            num(static_cast<std::int64_t>(max_orphans)),
                            num(static_cast<std::int64_t>(max_pending)),
                            num(me_.submit_grace.count())};
    auto r = co_await heartbeat_db_.query(std::move(sql), std::move(args));
    if (!r)
        co_return r.error();
    claimed out;
    for (int i = 0; i < r->size(); ++i) {
        out.jobs.push_back(read_job(*r, i, true));
        out.jobs.back().node = me_.name; // RETURNING saw the row before the claim
    }
    std::string clock = "SELECT " NOW_MS;
    std::vector<param> none;
    auto c = co_await heartbeat_db_.query(std::move(clock), std::move(none));
    if (!c)
        co_return c.error();
    auto db_now = at_ms(c->int64(0, 0));
    out.l = {db_now, db_now + me_.takeover};
    co_return out;
}

async_result<std::optional<core::job>> pg_repository::claim_one(std::string id) {
    auto turn = co_await heartbeat_lane_.wait_turn();
    std::string sql = fmt::format(R"(
UPDATE jobs SET claim_node = $1, claim_token = $2, claim_until = )" NOW_MS R"( + $3
WHERE id = $4 AND state <> 'pruned' AND (state NOT IN )" UNFINISHED R"( OR claim_until IS NULL
                   OR claim_until + CASE WHEN state = 'submitting' THEN greatest($5::bigint,
                        coalesce((SELECT n.submit_grace_ms FROM nodes n
                                  WHERE n.name = jobs.claim_node), 0))
                      ELSE 0 END < )" NOW_MS R"( OR claim_token = $2)
RETURNING {}, params)",
                                  job_columns);
    std::vector<param> args{me_.name, token_, num(me_.takeover.count()), std::move(id),
                            num(me_.submit_grace.count())};
    auto r = co_await heartbeat_db_.query(std::move(sql), std::move(args));
    if (!r)
        co_return r.error();
    if (r->size() == 0)
        co_return std::optional<core::job>{};
    auto j = read_job(*r, 0, true);
    j.node = me_.name;
    co_return std::optional<core::job>(std::move(j));
}

async_result<renewal> pg_repository::renew() {
    auto turn = co_await heartbeat_lane_.wait_turn();
    std::string sql = R"(
WITH n AS (
  UPDATE nodes SET heartbeat_at = )" NOW_MS R"(, requests_per_minute = $4::double precision,
    submit_grace_ms = $5::bigint
  WHERE name = $1 AND token = $2 RETURNING 1),
old AS (
  SELECT id, cancel_requested FROM jobs
  WHERE claim_token = $2 AND state IN )" UNFINISHED R"( AND EXISTS (SELECT 1 FROM n)
  ORDER BY id FOR UPDATE),
j AS (
  UPDATE jobs SET claim_until = )" NOW_MS R"( + $3
  FROM old WHERE jobs.id = old.id
  RETURNING jobs.id, old.cancel_requested)
SELECT (SELECT count(*) FROM n), )" NOW_MS R"(,
       (SELECT value FROM meta WHERE key = 'paused'), j.id, j.cancel_requested,
       (SELECT blocked_until FROM budget WHERE id = 1)
FROM (SELECT 1) one LEFT JOIN j ON true)";
    // Rows locked in one order (by id), as save() does: a heartbeat and a write of this
    // node's never wait for each other in a cycle.
    std::vector<param> args{me_.name, token_, num(me_.takeover.count()),
                            fmt::format("{}", me_.requests_per_minute),
                            num(me_.submit_grace.count())};
    auto r = co_await heartbeat_db_.query(std::move(sql), std::move(args));
    if (!r)
        co_return r.error();
    renewal out;
    if (r->size() == 0)
        co_return core::error(core::errc::store_failed, "the heartbeat had no answer");
    out.node_alive = r->int64(0, 0) == 1;
    auto db_now = at_ms(r->int64(0, 1));
    out.l = {db_now, db_now + me_.takeover};
    out.paused = r->opt_text(0, 2).value_or("0") == "1";
    out.blocked_until = at_ms(r->int64(0, 5));
    for (int i = 0; i < r->size(); ++i) {
        if (r->null(i, 3))
            continue;
        out.held.push_back(r->text(i, 3));
        if (r->text(i, 4) == "t")
            out.cancel_requested.push_back(r->text(i, 3));
    }
    co_return out;
}

async_result<void> pg_repository::release(std::vector<std::string> ids) {
    if (ids.empty())
        co_return core::result<void>{};
    auto turn = co_await heartbeat_lane_.wait_turn();
    std::vector<param> list(ids.begin(), ids.end());
    std::string sql =
        "UPDATE jobs SET claim_until = NULL, claim_token = NULL WHERE claim_token = $1 AND id = "
        "ANY($2::text[])";
    std::vector<param> args{token_, pg::array(list)};
    auto r = co_await heartbeat_db_.query(std::move(sql), std::move(args));
    if (!r)
        co_return r.error();
    co_return core::result<void>{};
}

async_result<void> pg_repository::leave() {
    if (token_.empty())
        co_return core::result<void>{};
    auto turn = co_await heartbeat_lane_.wait_turn();
    std::string sql = R"(
WITH freed AS (
  UPDATE jobs SET claim_until = NULL WHERE claim_token = $2 AND state IN )" UNFINISHED R"()
UPDATE nodes SET stopped_at = )" NOW_MS R"( WHERE name = $1 AND token = $2)";
    std::vector<param> args{me_.name, token_};
    auto r = co_await heartbeat_db_.query(std::move(sql), std::move(args));
    if (!r)
        co_return r.error();
    co_return core::result<void>{};
}

async_result<void> pg_repository::request_cancel(std::string id) {
    auto turn = co_await lane_.wait_turn();
    std::string sql =
        "UPDATE jobs SET cancel_requested = true WHERE id = $1 AND state IN " UNFINISHED;
    std::vector<param> args{std::move(id)};
    auto r = co_await db_.query(std::move(sql), std::move(args));
    if (!r)
        co_return r.error();
    co_return core::result<void>{};
}

async_result<std::vector<node_row>> pg_repository::nodes() {
    auto turn = co_await lane_.wait_turn();
    std::string sql = R"(
SELECT n.name, n.version, n.heartbeat_at, )" NOW_MS R"(, n.stopped_at IS NOT NULL,
       n.heartbeat_at + n.takeover_ms >= )" NOW_MS R"(, n.requests_per_minute,
       (SELECT count(*) FROM jobs j WHERE j.claim_token = n.token
          AND j.state IN )" UNFINISHED R"( AND j.claim_until >= )" NOW_MS R"()
FROM nodes n ORDER BY n.name)";
    std::vector<param> none;
    auto r = co_await db_.query(std::move(sql), std::move(none));
    if (!r)
        co_return r.error();
    std::vector<node_row> out;
    for (int i = 0; i < r->size(); ++i) {
        node_row n;
        n.name = r->text(i, 0);
        n.version = r->text(i, 1);
        n.heartbeat_at = at_ms(r->int64(i, 2));
        n.db_now = at_ms(r->int64(i, 3));
        n.stopped = r->text(i, 4) == "t";
        n.live = !n.stopped && r->text(i, 5) == "t";
        n.requests_per_minute = r->real(i, 6);
        n.held = r->int64(i, 7);
        out.push_back(std::move(n));
    }
    co_return out;
}

async_result<slot_grant> pg_repository::reserve_slots(int count, double configured_rpm,
                                                      std::optional<double> my_rpm,
                                                      std::int64_t my_epoch, double margin) {
    auto turn = co_await heartbeat_lane_.wait_turn();
    // The rate: the smallest configured among live nodes, or the shared (lowered) one.
    // The first slot: after the last one given out, now, and the end of any 429 block.
    // A node's raise of the shared rate counts only if it had seen the latest decrease.
    std::string sql = R"(
WITH live AS (
  SELECT min(requests_per_minute) AS rpm FROM nodes
  WHERE stopped_at IS NULL AND heartbeat_at + takeover_ms >= )" NOW_MS R"(),
b AS (SELECT * FROM budget WHERE id = 1 FOR UPDATE),
r AS (
  SELECT least(coalesce(b.allowed_rpm, 1e12), coalesce(live.rpm, $2::double precision)) * (1 - $4::double precision) AS paced,
         greatest(b.tat, )" NOW_MS R"(::double precision,
                  b.blocked_until::double precision) AS first,
         live.rpm AS configured
  FROM b, live),
u AS (
  UPDATE budget SET tat = r.first + $1::integer * 60000.0 / r.paced,
    allowed_rpm = CASE
      WHEN $3::bigint <> budget.epoch THEN budget.allowed_rpm
      WHEN $5::double precision IS NULL OR budget.allowed_rpm IS NULL THEN NULL
      WHEN $5::double precision > budget.allowed_rpm THEN $5::double precision
      ELSE budget.allowed_rpm END
  FROM r WHERE id = 1
  RETURNING r.first, 60000.0 / r.paced, budget.allowed_rpm, budget.epoch, budget.blocked_until)
SELECT *, )" NOW_MS R"( FROM u)";
    std::vector<param> args{num(count), fmt::format("{}", configured_rpm), num(my_epoch),
                            fmt::format("{}", margin),
                            my_rpm ? param{fmt::format("{}", *my_rpm)} : param{}};
    auto r = co_await heartbeat_db_.query(std::move(sql), std::move(args));
    if (!r)
        co_return r.error();
    if (r->size() != 1)
        co_return core::error(core::errc::store_failed, "the budget row is missing");
    slot_grant g;
    g.first = at_ms(static_cast<std::int64_t>(std::ceil(r->real(0, 0))));
    g.interval_ms = r->real(0, 1);
    g.count = count;
    if (!r->null(0, 2))
        g.allowed_rpm = r->real(0, 2);
    g.epoch = r->int64(0, 3);
    g.blocked_until = at_ms(r->int64(0, 4));
    g.db_now = at_ms(r->int64(0, 5));
    co_return g;
}

async_result<pg_repository::import_counts> pg_repository::import(import_batch batch) {
    auto turn = co_await lane_.wait_turn();
    constexpr int job_cols = 19;
    std::vector<std::vector<param>> cols(job_cols);
    for (auto& row : batch.jobs)
        for (int c = 0; c < job_cols; ++c)
            cols[static_cast<std::size_t>(c)].push_back(row[static_cast<std::size_t>(c)]);
    auto columns_of = [](const std::vector<std::vector<param>>& rows, std::size_t n) {
        std::vector<std::vector<param>> out(n);
        for (auto& row : rows)
            for (std::size_t c = 0; c < n; ++c)
                out[c].push_back(row[c]);
        return out;
    };
    auto hcols = columns_of(batch.history, 5);
    auto icols = columns_of(batch.inputs, 7);
    auto scols = columns_of(batch.spend, 6);
    auto dcols = columns_of(batch.deliveries, 9);
    std::string sql = R"(
WITH u AS (
  SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                       $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
                       $13::text[], $14::text[], $15::text[], $16::text[], $17::text[],
                       $18::text[], $19::text[])
       WITH ORDINALITY AS u(id, model, params, priority, state, request_id, status_url,
                            response_url, error, outputs, result, created_at, updated_at,
                            submitted_at, remote_done_at, finished_at, attempts, polls, source, n)),
ins AS (
  INSERT INTO jobs (id, model, params, priority, state, request_id, status_url, response_url,
                    error, outputs, result, created_at, updated_at, submitted_at,
                    remote_done_at, finished_at, attempts, polls, source, content_sha256,
                    pruned_at)
  SELECT id, model, CASE WHEN state = 'pruned' THEN '' ELSE params END, priority::integer,
         state, request_id, status_url, response_url,
         error, coalesce(outputs, '[]'), result, created_at::bigint, updated_at::bigint,
         submitted_at::bigint, remote_done_at::bigint, finished_at::bigint, attempts::integer,
         polls::integer, coalesce(source, ''),
         CASE WHEN state = 'pruned' THEN params END,
         CASE WHEN state = 'pruned' THEN updated_at::bigint END
  FROM u ORDER BY n
  ON CONFLICT (id) DO NOTHING
  RETURNING id),
h AS (
  INSERT INTO history (job_id, at, state, note, request_id, node)
  SELECT job_id, at, state, note, request_id, ' import'
  FROM unnest($20::text[], $21::bigint[], $22::text[], $23::text[], $24::text[])
       WITH ORDINALITY AS h(job_id, at, state, note, request_id, n)
  WHERE job_id IN (SELECT id FROM ins)
  ORDER BY n
  RETURNING 1),
i AS (
  INSERT INTO inputs (job_id, url, path, sha256, bytes, mime, hosted_url, node)
  SELECT job_id, url, path, sha256, bytes::bigint, mime, hosted_url, coalesce($25::text, '')
  FROM unnest($26::text[], $27::text[], $28::text[], $29::text[], $30::text[], $31::text[],
              $32::text[]) WITH ORDINALITY AS x(job_id, url, path, sha256, bytes, mime,
                                                 hosted_url, n)
  WHERE job_id IN (SELECT id FROM ins) ORDER BY n
  ON CONFLICT DO NOTHING),
s AS (
  INSERT INTO spend (job_id, attempt, model, at, micro, refunded, node)
  SELECT job_id, attempt::bigint, model, at::bigint, micro::bigint, refunded = '1', $25::text
  FROM unnest($33::text[], $34::text[], $35::text[], $36::text[], $37::text[], $38::text[])
       AS x(job_id, attempt, model, at, micro, refunded)
  WHERE job_id IN (SELECT id FROM ins)
  ON CONFLICT DO NOTHING),
d AS (
  INSERT INTO deliveries (event_id, target, job_id, type, payload, attempts, outcome, last_error,
                          next_at, node)
  SELECT event_id, target, job_id, type, payload, attempts::integer, outcome, last_error,
         next_at::bigint, coalesce($25::text, '')
  FROM unnest($39::text[], $40::text[], $41::text[], $42::text[], $43::text[], $44::text[],
              $45::text[], $46::text[], $47::text[]) WITH ORDINALITY
       AS x(event_id, target, job_id, type, payload, attempts, outcome, last_error, next_at, n)
  WHERE job_id IN (SELECT id FROM ins) ORDER BY n
  ON CONFLICT DO NOTHING)
SELECT 'job', id FROM ins UNION ALL SELECT 'history', count(*)::text FROM h)";
    std::vector<param> args;
    for (auto& c : cols)
        args.push_back(pg::array(c));
    for (auto& c : hcols)
        args.push_back(pg::array(c));
    args.push_back(me_.name.empty() ? param{} : param{me_.name});
    for (auto* group : {&icols, &scols, &dcols})
        for (auto& c : *group)
            args.push_back(pg::array(c));
    auto r = co_await db_.query(std::move(sql), std::move(args));
    if (!r)
        co_return r.error();
    import_counts out;
    std::set<std::string> fresh;
    for (int i = 0; i < r->size(); ++i) {
        if (r->text(i, 0) == "job")
            fresh.insert(r->text(i, 1));
        else
            out.history = static_cast<std::size_t>(std::stoll(r->text(i, 1)));
    }
    out.imported = fresh.size();
    std::vector<param> others;
    for (auto& row : batch.jobs)
        if (!fresh.count(*row[0]))
            others.push_back(row[0]);
    if (others.empty())
        co_return out;
    // The same job is the same content; where either side is a pruned job's tombstone,
    // the same content's hash (an import run twice finds its tombstones again).
    std::string read = "SELECT id, model, params, priority, state = 'pruned', content_sha256 "
                       "FROM jobs WHERE id = ANY($1::text[])";
    std::vector<param> a{pg::array(others)};
    auto s = co_await db_.query(std::move(read), std::move(a));
    if (!s)
        co_return s.error();
    struct stored {
        std::string model, params, priority;
        std::optional<std::string> digest; // a tombstone's
    };
    std::map<std::string, stored> theirs;
    for (int i = 0; i < s->size(); ++i)
        theirs[s->text(i, 0)] = {s->text(i, 1), s->text(i, 2), s->text(i, 3),
                                 s->text(i, 4) == "t" ? s->opt_text(i, 5) : std::nullopt};
    auto digest_of = [](const std::string& model, const std::string& params,
                        const std::string& priority) -> std::optional<std::string> {
        try {
            return content_digest(model, params, std::stoll(priority));
        } catch (const std::exception&) {
            return std::nullopt;
        }
    };
    for (auto& row : batch.jobs) {
        if (fresh.count(*row[0]))
            continue;
        auto it = theirs.find(*row[0]);
        bool same = false;
        if (it != theirs.end()) {
            auto& t = it->second;
            bool ours_pruned = row[4].value_or("") == "pruned";
            if (!ours_pruned && !t.digest) {
                same = t.model == row[1].value_or("") && t.params == row[2].value_or("") &&
                       t.priority == row[3].value_or("");
            } else {
                auto mine = ours_pruned ? row[2]
                                        : digest_of(row[1].value_or(""), row[2].value_or(""),
                                                    row[3].value_or(""));
                auto there = t.digest ? t.digest : digest_of(t.model, t.params, t.priority);
                same = mine && there && *mine == *there;
            }
        }
        if (same)
            ++out.already;
        else
            out.conflicts.push_back(*row[0]);
    }
    co_return out;
}

async_result<std::vector<remote_event>> pg_repository::events_after(std::int64_t seq,
                                                                    std::size_t limit) {
    auto turn = co_await lane_.wait_turn();
    std::string sql = R"(
SELECT h.seq, h.job_id, j.model, h.state, h.request_id, j.error, h.at, h.note,
       h.node IS NOT DISTINCT FROM $2 OR h.node = ' import'
FROM history h JOIN jobs j ON j.id = h.job_id
WHERE h.seq > $1
ORDER BY h.seq LIMIT $3)";
    std::vector<param> args{num(seq), me_.name, num(static_cast<std::int64_t>(limit))};
    auto r = co_await db_.query(std::move(sql), std::move(args));
    if (!r)
        co_return r.error();
    std::vector<remote_event> out;
    for (int i = 0; i < r->size(); ++i) {
        remote_event e;
        e.seq = r->int64(i, 0);
        e.j.id = r->text(i, 1);
        e.j.model = r->text(i, 2);
        e.j.state = core::parse_job_state(r->text(i, 3)).value_or(core::job_state::failed);
        e.j.request_id = r->opt_text(i, 4);
        e.j.error = r->opt_text(i, 5);
        e.at = at_ms(r->int64(i, 6));
        e.j.updated_at = e.at;
        e.note = r->text(i, 7);
        e.own = r->text(i, 8) == "t";
        out.push_back(std::move(e));
    }
    co_return out;
}

async_result<std::int64_t> pg_repository::last_event() {
    auto turn = co_await lane_.wait_turn();
    std::string sql = "SELECT coalesce(max(seq), 0) FROM history";
    std::vector<param> none;
    auto r = co_await db_.query(std::move(sql), std::move(none));
    if (!r)
        co_return r.error();
    co_return r->int64(0, 0);
}

async_result<void> pg_repository::report_block(core::time_point until,
                                               std::optional<double> lowered) {
    auto turn = co_await heartbeat_lane_.wait_turn();
    std::string sql = R"(
UPDATE budget SET blocked_until = greatest(blocked_until, $1::bigint),
  tat = greatest(tat, $1::double precision),
  allowed_rpm = CASE WHEN $2::double precision < coalesce(allowed_rpm, 1e12)
                     THEN $2::double precision ELSE allowed_rpm END,
  epoch = epoch + CASE WHEN $2::double precision < coalesce(allowed_rpm, 1e12) THEN 1 ELSE 0 END
WHERE id = 1)";
    std::vector<param> args{num(ms(until)), lowered ? param{fmt::format("{}", *lowered)} : param{}};
    auto r = co_await heartbeat_db_.query(std::move(sql), std::move(args));
    if (!r)
        co_return r.error();
    co_return core::result<void>{};
}

} // namespace klingd::storage
