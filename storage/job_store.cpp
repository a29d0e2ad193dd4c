// SQL for jobs, history and meta.
#include "storage/job_store.hpp"

#include <boost/json.hpp>
#include <fmt/format.h>
#include <sys/statvfs.h>
#include <unistd.h>

namespace klingd::storage {

namespace {

namespace json = boost::json;
using core::time_point;

// Forward migrations: entry i brings the schema from version i to i + 1.
const char* const migrations[] = {
    R"(
CREATE TABLE jobs (
  id TEXT PRIMARY KEY,
  model TEXT NOT NULL,
  params TEXT NOT NULL,
  priority INTEGER NOT NULL DEFAULT 0,
  state TEXT NOT NULL,
  request_id TEXT,
  status_url TEXT,
  response_url TEXT,
  error TEXT,
  outputs TEXT NOT NULL DEFAULT '[]',
  result TEXT,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  submitted_at INTEGER,
  remote_done_at INTEGER,
  finished_at INTEGER,
  attempts INTEGER NOT NULL DEFAULT 0,
  polls INTEGER NOT NULL DEFAULT 0,
  source TEXT NOT NULL DEFAULT ''
);
CREATE INDEX jobs_by_state ON jobs(state);
CREATE TABLE history (
  job_id TEXT NOT NULL,
  at INTEGER NOT NULL,
  state TEXT NOT NULL,
  note TEXT NOT NULL,
  request_id TEXT
);
CREATE INDEX history_by_job ON history(job_id);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
)",
    // 1 -> 2: /metrics and `klingctl stats` count jobs by state and model; with this index
    // that count reads the index alone, not every row (100,000 jobs: one index scan).
    R"(
CREATE INDEX jobs_by_state_model ON jobs(state, model);
DROP INDEX jobs_by_state;
)",
    // 2 -> 3: spend limits. One row per submission of a priced model (job, attempt), its
    // cost in micro-units; refunded once it provably created nothing.
    R"(
CREATE TABLE spend (
  job_id TEXT NOT NULL,
  attempt INTEGER NOT NULL,
  model TEXT NOT NULL,
  at INTEGER NOT NULL,
  micro INTEGER NOT NULL,
  refunded INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (job_id, attempt)
);
CREATE INDEX spend_by_time ON spend(at);
)",
    // 3 -> 4: local files as inputs. A job's file:// inputs as checked at intake, each
    // with its hosted URL once uploaded; and the uploads of the last day by content, so
    // that the same content is uploaded once a day at most.
    R"(
CREATE TABLE inputs (
  job_id TEXT NOT NULL,
  url TEXT NOT NULL,
  path TEXT NOT NULL,
  sha256 TEXT NOT NULL,
  bytes INTEGER NOT NULL,
  mime TEXT NOT NULL,
  hosted_url TEXT,
  node TEXT NOT NULL DEFAULT '',
  PRIMARY KEY (job_id, url)
);
CREATE TABLE uploads (
  sha256 TEXT PRIMARY KEY,
  hosted_url TEXT NOT NULL,
  uploaded_at INTEGER NOT NULL
);
)",
    // 4 -> 5: completion hooks. The outbox: one row per event and target, written in the
    // commit of the job's final state, until delivered or given up.
    R"(
CREATE TABLE deliveries (
  event_id TEXT NOT NULL,
  target TEXT NOT NULL,
  job_id TEXT NOT NULL,
  type TEXT NOT NULL,
  payload TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  outcome TEXT NOT NULL DEFAULT 'pending',
  last_error TEXT,
  next_at INTEGER NOT NULL,
  claim_until INTEGER,
  node TEXT NOT NULL DEFAULT '',
  PRIMARY KEY (event_id, target)
);
CREATE INDEX deliveries_by_job ON deliveries(job_id);
CREATE INDEX deliveries_due ON deliveries(next_at) WHERE outcome = 'pending';
)",
    // 5 -> 6: housekeeping. A finished job pruned after jobs.keep_finished_days keeps its
    // row as a tombstone (state 'pruned', params emptied) with its content's hash, so that
    // its id stays unique for the life of the database; its history, inputs and deliveries
    // go.
    R"(
ALTER TABLE jobs ADD COLUMN content_sha256 TEXT;
ALTER TABLE jobs ADD COLUMN pruned_at INTEGER;
)",
};

static_assert(std::size(migrations) == job_store::schema_version);

constexpr const char* job_columns =
    "id, model, priority, state, request_id, status_url, response_url, error, outputs, result, "
    "created_at, "
    "updated_at, submitted_at, remote_done_at, finished_at, attempts, polls";

std::int64_t ms(time_point t) {
    return t.time_since_epoch().count();
}
time_point at_ms(std::int64_t v) {
    return time_point(core::milliseconds(v));
}
std::optional<std::int64_t> opt_ms(const std::optional<time_point>& t) {
    return t ? std::optional<std::int64_t>(ms(*t)) : std::nullopt;
}

} // namespace

namespace {
// SQLite reports a read-only file or folder as "unable to open database file" (WAL needs
// to create files beside the database); say what it is instead.
const std::string& writable(const std::string& path) {
    std::string dir = path.find('/') == std::string::npos
                          ? std::string(".")
                          : path.substr(0, std::max<std::size_t>(1, path.rfind('/')));
    struct statvfs fs {};
    bool ro_fs = ::statvfs(dir.c_str(), &fs) == 0 && (fs.f_flag & ST_RDONLY);
    bool exists = ::access(path.c_str(), F_OK) == 0;
    if (ro_fs || (exists && ::access(path.c_str(), W_OK) != 0) ||
        (::access(dir.c_str(), F_OK) == 0 && ::access(dir.c_str(), W_OK) != 0))
        throw storage_error(
            fmt::format("{} is read-only: klingd must be able to write it and its folder {} "
                        "(check permissions, ownership and whether the file system is mounted "
                        "read-only)",
                        path, dir),
            SQLITE_READONLY);
    return path;
}
} // namespace

job_store::job_store(const std::string& path, sqlite_tuning tuning)
    : db_(writable(path), SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) {
    sqlite3_busy_timeout(db_.get(), static_cast<int>(tuning.busy_timeout.count()));
    // Reading the schema version first tells a non-database file apart before anything is written.
    std::int64_t version;
    {
        statement v(db_, "PRAGMA user_version");
        if (!v.step())
            throw storage_error("cannot read the schema version of " + path, SQLITE_ERROR);
        version = v.int64(0);
        v.reset();
    }
    if (sqlite3_db_readonly(db_.get(), "main") == 1)
        throw storage_error(fmt::format("{} is read-only: klingd must be able to write it and "
                                        "its folder (check permissions, ownership and whether the "
                                        "file system is mounted read-only)",
                                        path),
                            SQLITE_READONLY);
    if (version > 0) {
        // A damaged file is refused before anything is written to it.
        statement check(db_, "PRAGMA quick_check(1)");
        std::string verdict = check.step() ? check.text(0) : "no answer";
        if (verdict != "ok")
            throw storage_error(fmt::format("{} is damaged ({}); klingd leaves it as it is: "
                                            "restore a backup, or move it away to start afresh",
                                            path, verdict),
                                SQLITE_CORRUPT);
    }
    if (version > schema_version)
        throw storage_error(
            fmt::format("{} has schema version {}, newer than this klingd understands ({}); "
                        "refusing to touch it",
                        path, version, schema_version),
            SQLITE_ERROR);
    db_.exec("PRAGMA journal_mode = WAL", "enable WAL");
    db_.exec(tuning.fsync ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = OFF",
             "set synchronous");
    db_.exec("PRAGMA foreign_keys = ON", "enable foreign keys");
    migrate();

    insert_.emplace(
        db_,
        "INSERT INTO jobs (id, model, params, priority, state, created_at, updated_at, source) "
        "VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5, ?6)");
    find_content_.emplace(
        db_, "SELECT model, params, priority, state, content_sha256 FROM jobs WHERE id = ?1");
    update_.emplace(
        db_, "UPDATE jobs SET state = ?2, request_id = ?3, status_url = ?4, response_url = ?5, "
             "error = ?6, outputs = ?7, result = ?8, updated_at = ?9, submitted_at = ?10, "
             "remote_done_at = ?11, finished_at = ?12, attempts = ?13, polls = ?14 WHERE id = ?1 "
             "AND state <> 'pruned'"); // a tombstone is never brought back
    add_history_.emplace(
        db_,
        "INSERT INTO history (job_id, at, state, note, request_id) VALUES (?1, ?2, ?3, ?4, ?5)");
    get_.emplace(db_, fmt::format("SELECT {}, params FROM jobs WHERE id = ?1 AND state <> 'pruned'",
                                  job_columns));
    params_.emplace(db_, "SELECT params FROM jobs WHERE id = ?1");
}

void job_store::migrate() {
    statement v(db_, "PRAGMA user_version");
    v.step();
    auto version = v.int64(0);
    v.reset();
    constexpr auto known = static_cast<std::int64_t>(std::size(migrations));
    for (; version < known; ++version) {
        transaction t(db_);
        db_.exec(migrations[version], fmt::format("migrate schema to version {}", version + 1));
        db_.exec(fmt::format("PRAGMA user_version = {}", version + 1), "set schema version");
        t.commit();
    }
}

insert_outcome job_store::insert(const core::job_spec& spec, time_point now,
                                 const std::string& source) {
    transaction t(db_);
    auto out = insert_many({spec}, now, {source});
    t.commit();
    return out.front();
}

std::vector<insert_outcome> job_store::insert_many(const std::vector<core::job_spec>& specs,
                                                   time_point now,
                                                   const std::vector<std::string>& sources) {
    std::optional<transaction> t;
    if (sqlite3_get_autocommit(db_.get()))
        t.emplace(db_);
    std::vector<insert_outcome> out;
    out.reserve(specs.size());
    for (std::size_t i = 0; i < specs.size(); ++i) {
        const auto& s = specs[i];
        auto& f = *find_content_;
        f.bind(1, s.id);
        if (f.step()) {
            // A pruned job is known by its content's hash only.
            bool same =
                f.text(3) == "pruned"
                    ? f.opt_text(4) == content_digest(s.model, s.params, s.priority)
                    : f.text(0) == s.model && f.text(1) == s.params && f.int64(2) == s.priority;
            f.reset();
            out.push_back(same ? insert_outcome::same_content : insert_outcome::conflict);
            continue;
        }
        insert_->bind(1, s.id)
            .bind(2, s.model)
            .bind(3, s.params)
            .bind(4, s.priority)
            .bind(5, ms(now));
        insert_->bind(6, i < sources.size() ? sources[i] : std::string());
        insert_->run();
        for (const auto& in : s.inputs) {
            statement ins(db_, "INSERT OR IGNORE INTO inputs (job_id, url, path, sha256, bytes, "
                               "mime, hosted_url) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
            ins.bind(1, s.id).bind(2, in.url).bind(3, in.path).bind(4, in.sha256);
            ins.bind(5, in.bytes).bind(6, in.mime).bind(7, in.hosted).run();
        }
        add_history_->bind(1, s.id)
            .bind(2, ms(now))
            .bind(3, core::to_string(core::job_state::pending));
        add_history_->bind(4, i < sources.size() && !sources[i].empty()
                                  ? "accepted from " + sources[i]
                                  : "accepted");
        add_history_->bind(5, std::nullopt).run();
        out.push_back(insert_outcome::inserted);
    }
    if (t)
        t->commit();
    return out;
}

void job_store::write_history(const std::string& id, const history_entry& e) {
    add_history_->bind(1, id)
        .bind(2, ms(e.at))
        .bind(3, e.state)
        .bind(4, e.note)
        .bind(5, e.request_id)
        .run();
}

void job_store::write_job(const core::job& j) {
    auto& u = *update_;
    u.bind(1, j.id).bind(2, core::to_string(j.state)).bind(3, j.request_id).bind(4, j.status_url);
    u.bind(5, j.response_url).bind(6, j.error).bind(7, outputs_json(j.outputs)).bind(8, j.result);
    u.bind(9, ms(j.updated_at)).bind(10, opt_ms(j.submitted_at)).bind(11, opt_ms(j.remote_done_at));
    u.bind(12, opt_ms(j.finished_at)).bind(13, j.attempts).bind(14, j.polls);
    u.run();
}

void job_store::save(const core::job& j, const std::string& note) {
    transaction t(db_);
    write_job(j);
    if (!note.empty())
        write_history(j.id,
                      {j.updated_at, std::string(core::to_string(j.state)), note, j.request_id});
    t.commit();
}

std::vector<core::local_input> job_store::inputs_of(const std::string& id) {
    statement s(db_, "SELECT url, path, sha256, bytes, mime, hosted_url FROM inputs "
                     "WHERE job_id = ?1 ORDER BY rowid");
    s.bind(1, id);
    std::vector<core::local_input> out;
    while (s.step())
        out.push_back({s.text(0), s.text(1), s.text(2), s.int64(3), s.text(4), s.opt_text(5)});
    return out;
}

void job_store::record_upload(const std::string& id, const std::string& url,
                              const std::string& sha256, const std::string& hosted, time_point at,
                              bool fresh) {
    transaction t(db_);
    statement u(db_, "UPDATE inputs SET hosted_url = ?3 WHERE job_id = ?1 AND url = ?2");
    u.bind(1, id).bind(2, url).bind(3, hosted).run();
    if (fresh) {
        statement c(db_, "INSERT INTO uploads (sha256, hosted_url, uploaded_at) VALUES (?1, ?2, "
                         "?3) ON CONFLICT (sha256) DO UPDATE SET hosted_url = excluded.hosted_url, "
                         "uploaded_at = excluded.uploaded_at");
        c.bind(1, sha256).bind(2, hosted).bind(3, ms(at)).run();
    }
    t.commit();
}

std::optional<std::string> job_store::cached_upload(const std::string& sha256, time_point since) {
    statement s(db_, "SELECT hosted_url FROM uploads WHERE sha256 = ?1 AND uploaded_at >= ?2");
    s.bind(1, sha256).bind(2, ms(since));
    if (s.step())
        return s.text(0);
    return std::nullopt;
}

spend_totals job_store::spend(core::time_point day_start, core::time_point month_start) {
    statement s(db_, "SELECT coalesce(sum(CASE WHEN at >= ?1 THEN micro END), 0), "
                     "coalesce(sum(micro), 0) FROM spend WHERE at >= ?2 AND refunded = 0");
    s.bind(1, ms(day_start)).bind(2, ms(month_start));
    spend_totals out;
    if (s.step()) {
        out.today = s.int64(0);
        out.month = s.int64(1);
    }
    return out;
}

void job_store::charge(const core::job& j, const spend_charge& c) {
    // In the transaction that commits "submitting": nothing else writes meanwhile. The
    // attempt's own earlier row (a submit not sent, taken back) does not count.
    statement sum(db_, "SELECT coalesce(sum(CASE WHEN at >= ?1 THEN micro END), 0), "
                       "coalesce(sum(micro), 0) FROM spend WHERE at >= ?2 AND refunded = 0 "
                       "AND NOT (job_id = ?3 AND attempt = ?4)");
    sum.bind(1, ms(c.day_start)).bind(2, ms(c.month_start)).bind(3, j.id).bind(4, c.attempt);
    std::int64_t today = 0, month = 0;
    if (sum.step()) {
        today = sum.int64(0);
        month = sum.int64(1);
    }
    if (c.daily_limit > 0 && today + c.micro > c.daily_limit)
        throw spend_refused(spend_limit_kind::daily, today, month);
    if (c.monthly_limit > 0 && month + c.micro > c.monthly_limit)
        throw spend_refused(spend_limit_kind::monthly, today, month);
    statement put(db_, "INSERT INTO spend (job_id, attempt, model, at, micro, refunded) "
                       "VALUES (?1, ?2, ?3, ?4, ?5, 0) ON CONFLICT (job_id, attempt) DO UPDATE "
                       "SET model = excluded.model, at = excluded.at, micro = excluded.micro, "
                       "refunded = 0");
    put.bind(1, j.id).bind(2, c.attempt).bind(3, c.model).bind(4, ms(c.at)).bind(5, c.micro);
    put.run();
}

void job_store::refund(const std::string& id, std::int64_t attempt) {
    statement s(db_, "UPDATE spend SET refunded = 1 WHERE job_id = ?1 AND attempt = ?2");
    s.bind(1, id).bind(2, attempt);
    s.run();
}

void job_store::save_many(const std::vector<change>& changes) {
    if (changes.empty())
        return;
    transaction t(db_);
    for (auto& c : changes) {
        if (c.charge)
            charge(c.j, *c.charge); // throws spend_refused: nothing of the batch is written
        if (c.refund_attempt)
            refund(c.j.id, *c.refund_attempt);
        write_job(c.j);
        for (auto& h : c.history)
            write_history(c.j.id, h);
        if (c.event)
            add_event(c.j.id, *c.event);
    }
    t.commit();
}

void job_store::add_event(const std::string& job_id, const hook_event& e) {
    // The same event written again (a commit whose answer was lost, replayed): once.
    statement again(db_, "SELECT 1 FROM deliveries WHERE job_id = ?1 AND payload = ?2");
    again.bind(1, job_id).bind(2, e.payload);
    if (again.step()) {
        again.reset();
        return;
    }
    statement n(db_, "SELECT count(DISTINCT event_id) FROM deliveries WHERE job_id = ?1");
    n.bind(1, job_id);
    std::int64_t seen = n.step() ? n.int64(0) : 0;
    auto id = fmt::format("{}-{}-{}", job_id, seen + 1, e.state);
    for (auto& target : e.targets) {
        statement ins(db_, "INSERT OR IGNORE INTO deliveries (event_id, target, job_id, type, "
                           "payload, next_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)");
        ins.bind(1, id).bind(2, target).bind(3, job_id).bind(4, e.type).bind(5, e.payload);
        ins.bind(6, ms(e.at)).run();
    }
}

namespace {
hook_delivery read_delivery(statement& s) {
    hook_delivery d;
    d.event_id = s.text(0);
    d.target = s.text(1);
    d.job_id = s.text(2);
    d.type = s.text(3);
    d.payload = s.text(4);
    d.attempts = static_cast<int>(s.int64(5));
    d.outcome = s.text(6);
    d.last_error = s.opt_text(7);
    d.next_at = at_ms(s.int64(8));
    d.node = s.text(9);
    return d;
}
constexpr const char* delivery_columns =
    "event_id, target, job_id, type, payload, attempts, outcome, last_error, next_at, node";
} // namespace

std::vector<hook_delivery> job_store::take_due_deliveries(time_point now, time_point claim_until,
                                                          const std::string& target,
                                                          std::size_t limit) {
    transaction t(db_);
    statement s(db_, fmt::format("SELECT {} FROM deliveries WHERE outcome = 'pending' AND "
                                 "next_at <= ?1 AND (claim_until IS NULL OR claim_until < ?1) "
                                 "AND target = ?3 ORDER BY next_at LIMIT ?2",
                                 delivery_columns));
    s.bind(1, ms(now)).bind(2, static_cast<std::int64_t>(limit)).bind(3, target);
    std::vector<hook_delivery> out;
    while (s.step())
        out.push_back(read_delivery(s));
    for (auto& d : out) {
        statement c(db_, "UPDATE deliveries SET claim_until = ?3, attempts = attempts + 1 "
                         "WHERE event_id = ?1 AND target = ?2");
        c.bind(1, d.event_id).bind(2, d.target).bind(3, ms(claim_until)).run();
        ++d.attempts;
    }
    t.commit();
    return out;
}

void job_store::finish_delivery(const hook_delivery& d) {
    statement u(db_, "UPDATE deliveries SET attempts = ?3, outcome = ?4, last_error = ?5, "
                     "next_at = ?6, claim_until = NULL WHERE event_id = ?1 AND target = ?2");
    u.bind(1, d.event_id).bind(2, d.target).bind(3, d.attempts).bind(4, d.outcome);
    u.bind(5, d.last_error).bind(6, ms(d.next_at)).run();
}

std::vector<hook_delivery> job_store::deliveries_of(const std::string& job_id) {
    statement s(db_, fmt::format("SELECT {} FROM deliveries WHERE job_id = ?1 ORDER BY rowid",
                                 delivery_columns));
    s.bind(1, job_id);
    std::vector<hook_delivery> out;
    while (s.step())
        out.push_back(read_delivery(s));
    return out;
}

std::map<std::string, std::int64_t> job_store::delivery_counts() {
    statement s(db_, "SELECT outcome, count(*) FROM deliveries GROUP BY outcome");
    std::map<std::string, std::int64_t> out;
    while (s.step())
        out[s.text(0)] = s.int64(1);
    return out;
}

core::job job_store::read_job(statement& s, bool with_params) const {
    core::job j;
    j.id = s.text(0);
    j.model = s.text(1);
    j.priority = static_cast<int>(s.int64(2));
    j.state = core::parse_job_state(s.text(3)).value_or(core::job_state::failed);
    j.request_id = s.opt_text(4);
    j.status_url = s.opt_text(5);
    j.response_url = s.opt_text(6);
    j.error = s.opt_text(7);
    j.outputs = parse_outputs(s.text(8));
    j.result = s.opt_text(9);
    j.created_at = at_ms(s.int64(10));
    j.updated_at = at_ms(s.int64(11));
    if (auto v = s.opt_int64(12))
        j.submitted_at = at_ms(*v);
    if (auto v = s.opt_int64(13))
        j.remote_done_at = at_ms(*v);
    if (auto v = s.opt_int64(14))
        j.finished_at = at_ms(*v);
    j.attempts = static_cast<int>(s.int64(15));
    j.polls = static_cast<int>(s.int64(16));
    if (with_params)
        j.params = s.text(17);
    if (j.result)
        j.phase = core::job_phase::download_due;
    return j;
}

std::optional<core::job> job_store::get(const std::string& id) {
    auto& s = *get_;
    s.bind(1, id);
    if (!s.step())
        return std::nullopt;
    auto j = read_job(s, true);
    s.reset();
    return j;
}

std::vector<core::job> job_store::list(const job_filter& f) {
    std::string sql = fmt::format("SELECT {} FROM jobs WHERE state <> 'pruned'", job_columns);
    if (f.state)
        sql += " AND state = ?1";
    if (f.model)
        sql += " AND model = ?2";
    if (f.after)
        sql += " AND rowid > (SELECT rowid FROM jobs WHERE id = ?3)";
    sql += " ORDER BY rowid LIMIT ?4";
    statement s(db_, sql);
    if (f.state)
        s.bind(1, core::to_string(*f.state));
    if (f.model)
        s.bind(2, *f.model);
    if (f.after)
        s.bind(3, *f.after);
    s.bind(4, static_cast<std::int64_t>(f.limit));
    std::vector<core::job> out;
    while (s.step())
        out.push_back(read_job(s, false));
    return out;
}

std::vector<core::job> job_store::unfinished() {
    statement s(
        db_, fmt::format(
                 "SELECT {}, CASE WHEN state IN ('pending','submitting') THEN params ELSE '' END "
                 "FROM jobs WHERE state IN ('pending','submitting','queued','processing') "
                 "ORDER BY rowid",
                 job_columns));
    std::vector<core::job> out;
    while (s.step())
        out.push_back(read_job(s, true));
    return out;
}

std::string job_store::params_of(const std::string& id) {
    auto& s = *params_;
    s.bind(1, id);
    std::string p = s.step() ? s.text(0) : std::string();
    s.reset();
    return p;
}

std::vector<history_entry> job_store::history(const std::string& id) {
    statement s(db_,
                "SELECT at, state, note, request_id FROM history WHERE job_id = ?1 ORDER BY rowid");
    s.bind(1, id);
    std::vector<history_entry> out;
    while (s.step())
        out.push_back({at_ms(s.int64(0)), s.text(1), s.text(2), s.opt_text(3)});
    return out;
}

std::map<std::pair<std::string, std::string>, std::int64_t> job_store::count_by_state_and_model() {
    statement s(db_, "SELECT state, model, count(*) FROM jobs GROUP BY state, model");
    std::map<std::pair<std::string, std::string>, std::int64_t> out;
    while (s.step())
        out[{s.text(0), s.text(1)}] = s.int64(2);
    return out;
}

std::int64_t job_store::prune(time_point finished_before, time_point now, std::size_t limit) {
    transaction t(db_);
    // Finished before the cut, and with no completion hook still to deliver.
    statement pick(db_, "SELECT id, model, params, priority FROM jobs WHERE state IN "
                        "('completed','failed','expired','cancelled') AND "
                        "coalesce(finished_at, updated_at) < ?1 AND NOT EXISTS (SELECT 1 FROM "
                        "deliveries d WHERE d.job_id = jobs.id AND d.outcome = 'pending') "
                        "LIMIT ?2");
    pick.bind(1, ms(finished_before)).bind(2, static_cast<std::int64_t>(limit));
    std::vector<std::pair<std::string, std::string>> picked; // id, content hash
    while (pick.step())
        picked.emplace_back(pick.text(0),
                            content_digest(pick.text(1), pick.text(2), pick.int64(3)));
    pick.reset();
    statement tomb(db_, "UPDATE jobs SET state = 'pruned', params = '', result = NULL, "
                        "outputs = '[]', error = NULL, status_url = NULL, response_url = NULL, "
                        "content_sha256 = ?2, pruned_at = ?3 WHERE id = ?1");
    statement history(db_, "DELETE FROM history WHERE job_id = ?1");
    statement inputs(db_, "DELETE FROM inputs WHERE job_id = ?1");
    statement deliveries(db_, "DELETE FROM deliveries WHERE job_id = ?1");
    for (auto& [id, digest] : picked) {
        tomb.bind(1, id).bind(2, digest).bind(3, ms(now)).run();
        history.bind(1, id).run();
        inputs.bind(1, id).run();
        deliveries.bind(1, id).run();
    }
    // Uploads are remembered a day (cached_upload); older ones serve nothing.
    statement uploads(db_, "DELETE FROM uploads WHERE uploaded_at < ?1");
    uploads.bind(1, ms(now - std::chrono::hours(48))).run();
    t.commit();
    return static_cast<std::int64_t>(picked.size());
}

std::vector<double> job_store::recent_durations(const std::string& model, int n) {
    statement s(
        db_,
        "SELECT (remote_done_at - submitted_at) / 1000.0 FROM jobs WHERE model = ?1 AND state = "
        "'completed' AND remote_done_at IS NOT NULL AND submitted_at IS NOT NULL "
        "ORDER BY finished_at DESC LIMIT ?2");
    s.bind(1, model).bind(2, n);
    std::vector<double> out;
    while (s.step())
        out.push_back(s.real(0));
    return out;
}

std::optional<std::string> job_store::meta(const std::string& key) {
    statement s(db_, "SELECT value FROM meta WHERE key = ?1");
    s.bind(1, key);
    if (!s.step())
        return std::nullopt;
    auto v = s.text(0);
    s.reset();
    return v;
}

void job_store::set_meta(const std::string& key, const std::string& value) {
    statement s(
        db_,
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2");
    s.bind(1, key).bind(2, value).run();
}

} // namespace klingd::storage
