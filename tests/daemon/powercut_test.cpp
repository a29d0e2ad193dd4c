// Power cuts, not only process kills. klingd runs a busy batch with a recorder preloaded
// (tests/support/powercut_preload.cpp) that notes each fsync and fdatasync under its
// folder, and what it made durable: a file's bytes, a folder's entries. For each chosen
// point of that trace the test rebuilds the folder as a disk would hold it after a power
// cut there: the set-up as it was, then every recorded sync up to the point, and nothing
// else (a write never synced is lost, a rename whose folder was never synced is undone,
// a file whose data was never synced is empty). klingd then starts on what is left and
// runs to the end, and the test checks:
//  - no job lost: every job file of the batch ends as a job;
//  - none submitted twice: a job durable as "submitting" or with a request id is not
//    submitted again, and one submitted before the cut is not submitted again either;
//  - nothing completed without its files, byte for byte;
//  - no file in accepted/ without its job.
// Each cut is rebuilt twice: with only what was synced (the strictest disk), and with
// every change of names made before the cut kept as well (a disk that journals its
// metadata in order). The default run cuts at 8 points of a 10-job batch, and at its
// two ends; KLINGD_POWERCUT_JOBS and KLINGD_POWERCUT_POINTS (0: at every recorded
// change) make it longer.
#include "tests/daemon/daemon_env.hpp"

#include <dirent.h>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <gtest/gtest.h>
#include <limits>
#include <optional>
#include <set>
#include <sqlite3.h>
#include <sstream>
#include <sys/stat.h>

namespace {

using namespace klingd::test;
namespace fs = std::filesystem;
namespace json = boost::json;
using namespace std::chrono_literals;

struct entry {
    unsigned long long ino;
    int type; // DT_REG, DT_DIR, ...
    std::string name;
};

// A folder tree as a disk holds it: entries by folder, bytes by inode.
struct disk_image {
    std::map<std::string, std::vector<entry>> dirs; // "." is the root
    std::map<unsigned long long, std::string> files;
};

struct sync_event {
    char kind; // 'F' file, 'D' folder
    long long seq, t_begin_us, t_end_us;
    unsigned long long ino;
    std::string path;
};

// The set-up, before klingd starts: everything on it counts as durable.
void snapshot(const std::string& root, const std::string& rel, disk_image& img) {
    auto& list = img.dirs[rel];
    for (auto& e : fs::directory_iterator(rel == "." ? root : root + "/" + rel)) {
        struct stat st {};
        if (::lstat(e.path().c_str(), &st) != 0)
            continue;
        std::string name = e.path().filename();
        std::string child = rel == "." ? name : rel + "/" + name;
        if (S_ISDIR(st.st_mode)) {
            list.push_back({st.st_ino, DT_DIR, name});
            snapshot(root, child, img);
        } else if (S_ISREG(st.st_mode)) {
            list.push_back({st.st_ino, DT_REG, name});
            img.files[st.st_ino] = read_file(e.path());
        }
    }
}

std::vector<sync_event> read_trace(const std::string& dir) {
    std::vector<sync_event> out;
    std::ifstream f(dir + "/trace");
    std::string line;
    while (std::getline(f, line)) {
        std::istringstream in(line);
        sync_event e{};
        in >> e.kind >> e.seq >> e.t_begin_us >> e.t_end_us >> e.ino;
        in.get();
        std::getline(in, e.path);
        out.push_back(std::move(e));
    }
    std::sort(out.begin(), out.end(),
              [](const sync_event& a, const sync_event& b) { return a.seq < b.seq; });
    return out;
}

std::pair<std::string, std::string> split_path(const std::string& rel) {
    auto slash = rel.rfind('/');
    if (slash == std::string::npos)
        return {".", rel};
    return {rel.substr(0, slash), rel.substr(slash + 1)};
}

// A change of names replayed on the image: rename, unlink or mkdir.
void apply_name_change(disk_image& img, const sync_event& e) {
    auto drop = [&](const std::string& rel) -> std::optional<entry> {
        auto [dir, name] = split_path(rel);
        auto& list = img.dirs[dir];
        for (auto it = list.begin(); it != list.end(); ++it)
            if (it->name == name) {
                entry gone = *it;
                list.erase(it);
                return gone;
            }
        return std::nullopt;
    };
    if (e.kind == 'U') {
        drop(e.path);
        return;
    }
    if (e.kind == 'M') {
        auto [dir, name] = split_path(e.path);
        drop(e.path);
        img.dirs[dir].push_back({0, DT_DIR, name});
        img.dirs.try_emplace(e.path);
        return;
    }
    auto tab = e.path.find('\t');
    std::string from = e.path.substr(0, tab), to = e.path.substr(tab + 1);
    auto moved = drop(from);
    drop(to);
    auto [dir, name] = split_path(to);
    img.dirs[dir].push_back({e.ino, moved ? moved->type : DT_REG, name});
}

// How much of what was not synced a power cut keeps: nothing (the strictest disk), or
// every change of names made before the cut, in order (a disk that journals its
// metadata in order, as ext4 does, may keep them); bytes never synced are lost either way.
enum class cut_model { syncs_only, names_kept };

// The set-up plus events[0..count).
disk_image after(const disk_image& base, const std::vector<sync_event>& events, std::size_t count,
                 const std::string& trace, cut_model model) {
    disk_image img = base;
    for (std::size_t i = 0; i < count; ++i) {
        const auto& e = events[i];
        if (e.kind == 'R' || e.kind == 'U' || e.kind == 'M') {
            if (model == cut_model::names_kept)
                apply_name_change(img, e);
            continue;
        }
        std::string body = fmt::format("{}/{}.{}", trace, e.seq, e.kind == 'D' ? "dir" : "blob");
        if (e.kind == 'F') {
            img.files[e.ino] = read_file(body);
            continue;
        }
        std::vector<entry> list;
        std::istringstream in(read_file(body));
        std::string line;
        while (std::getline(in, line)) {
            std::istringstream l(line);
            entry en{};
            l >> en.ino >> en.type;
            l.get();
            std::getline(l, en.name);
            list.push_back(std::move(en));
        }
        img.dirs[e.path] = std::move(list);
    }
    return img;
}

void materialize(const disk_image& img, const std::string& root, const std::string& rel) {
    auto it = img.dirs.find(rel);
    if (it == img.dirs.end())
        return; // created, never synced: empty
    for (auto& e : it->second) {
        std::string child = rel == "." ? e.name : rel + "/" + e.name;
        std::string path = root + "/" + child;
        if (e.type == DT_DIR) {
            fs::create_directories(path);
            materialize(img, root, child);
        } else if (e.type == DT_REG) {
            if (e.name.size() > 4 && e.name.substr(e.name.size() - 4) == "-shm")
                continue; // SQLite's shared memory: rebuilt from the WAL by the first opener
            auto f = img.files.find(e.ino);
            write_file(path, f == img.files.end() ? std::string() : f->second);
        }
    }
}

// The jobs' states in the database as the cut left it.
std::map<std::string, std::string> states_in(const std::string& db) {
    std::map<std::string, std::string> out;
    if (!fs::exists(db))
        return out;
    sqlite3* h = nullptr;
    if (sqlite3_open(db.c_str(), &h) == SQLITE_OK) {
        sqlite3_stmt* st = nullptr;
        if (sqlite3_prepare_v2(h, "SELECT id, state FROM jobs", -1, &st, nullptr) == SQLITE_OK) {
            while (sqlite3_step(st) == SQLITE_ROW)
                out[reinterpret_cast<const char*>(sqlite3_column_text(st, 0))] =
                    reinterpret_cast<const char*>(sqlite3_column_text(st, 1));
            sqlite3_finalize(st);
        }
    }
    sqlite3_close(h);
    return out;
}

// Submissions by marker that reached the sim before t_ms (all when t_ms < 0).
std::map<std::string, int> submitted_before(const json::value& stats, long long t_ms) {
    std::map<std::string, int> out;
    for (auto& r : stats.at("requests").as_array()) {
        std::string prompt(r.at("prompt").as_string());
        if (t_ms < 0 || r.at("submitted_at_ms").to_number<long long>() < t_ms)
            out[prompt.substr(0, prompt.find(' '))]++;
    }
    return out;
}

// The cut points: `points` of them spread over the trace (0: every one), the ends, and
// just before and after the first move into accepted/ (the intake's hand-over).
std::vector<std::size_t> cut_points(const std::vector<sync_event>& trace, int points) {
    std::size_t events = trace.size();
    std::set<std::size_t> at{0, events};
    for (std::size_t i = 0; i < events; ++i)
        if (trace[i].kind == 'R' && trace[i].path.find("spool/accepted/") != std::string::npos) {
            at.insert(i);
            at.insert(i + 1);
            break;
        }
    if (points <= 0)
        for (std::size_t i = 0; i <= events; ++i)
            at.insert(i);
    else
        for (int i = 1; i <= points; ++i)
            at.insert(events * static_cast<std::size_t>(i) / static_cast<std::size_t>(points + 1));
    return {at.begin(), at.end()};
}

TEST(power_cut, at_each_durable_point_nothing_is_lost_twice_submitted_or_completed_without_files) {
    const int jobs = env_int("KLINGD_POWERCUT_JOBS", 10);
    const int points = env_int("KLINGD_POWERCUT_POINTS", 8);
    // A retention of two hours (the API's and klingd's), so that the long form's late
    // cuts do not find their jobs' results forgotten.
    daemon_options o;
    o.retention_s = 7200;
    o.sim_args = {"--retention-s", fmt::format("{}", 7200 / o.scale)};
    daemon_env env(o);
    temp_dir trace("powercut");
    // The installation and the batch, on disk before klingd starts.
    for (auto d : {"spool/accepted", "spool/rejected", "output"})
        fs::create_directories(env.dir() + "/" + d);
    std::vector<std::string> ids;
    for (int i = 0; i < jobs; ++i) {
        ids.push_back(fmt::format("pc{:03}", i));
        env.drop(ids.back() + ".json", image_job(ids.back())); // a video takes 4x as long
    }
    disk_image base;
    snapshot(env.dir(), ".", base);

    std::string root = fs::canonical(env.dir());
    env.start({{"LD_PRELOAD", POWERCUT_PRELOAD_PATH},
               {"POWERCUT_ROOT", root},
               {"POWERCUT_TRACE", trace.path()}});
    ASSERT_TRUE(env.wait_terminal(ids, 60s)) << env.log();
    env.kill9();
    auto original = env.sim_stats();
    auto events = read_trace(trace.path());
    ASSERT_GE(events.size(), static_cast<std::size_t>(3 * jobs))
        << "the recorder saw too few syncs: is it preloaded?";
    ASSERT_TRUE(std::any_of(events.begin(), events.end(), [](const sync_event& e) {
        return e.kind == 'R' && e.path.find("spool/accepted/") != std::string::npos;
    })) << "the recorder saw no move into accepted/";

    int completed_after_cut = 0, cuts_with_completed_jobs = 0, cuts_with_jobs_in_flight = 0,
        cuts_with_accepted_files = 0, checked = 0;
    for (std::size_t k : cut_points(events, points))
        for (auto model : {cut_model::syncs_only, cut_model::names_kept}) {
            SCOPED_TRACE(fmt::format("power cut after {} of {} recorded changes, {}", k,
                                     events.size(),
                                     model == cut_model::syncs_only ? "syncs only" : "names kept"));
            ++checked;
            // The image holds for a cut up to the end of change k (its sync not yet done): count
            // as happened everything the sim saw before then, the strictest reading.
            long long cut_ms = k == events.size() ? std::numeric_limits<long long>::max()
                                                  : events[k].t_end_us / 1000;
            auto sent_before = submitted_before(original, cut_ms);
            for (auto& e : fs::directory_iterator(env.dir()))
                fs::remove_all(e.path());
            materialize(after(base, events, k, trace.path(), model), env.dir(), ".");
            auto durable = states_in(env.dir() + "/klingd.db");
            if (k < events.size()) {
                auto has = [&](auto pred) {
                    return std::any_of(durable.begin(), durable.end(),
                                       [&](const auto& js) { return pred(js.second); });
                };
                cuts_with_completed_jobs +=
                    has([](const std::string& st) { return st == "completed"; });
                cuts_with_jobs_in_flight += has([](const std::string& st) {
                    return st == "submitting" || st == "queued" || st == "processing";
                });
            }
            cuts_with_accepted_files += !fs::is_empty(env.dir() + "/spool/accepted");
            for (auto& e : fs::directory_iterator(env.dir() + "/spool/accepted")) {
                std::string id = e.path().stem();
                EXPECT_TRUE(durable.count(id)) << id << " is in accepted/ but not in the database";
            }

            auto before = submitted_before(env.sim_stats(), -1);
            env.start();
            ASSERT_TRUE(env.wait_terminal(ids, 60s)) << env.log().substr(0, 20000);
            auto now = submitted_before(env.sim_stats(), -1);
            auto all = env.jobs();
            EXPECT_EQ(all.size(), ids.size()) << "a job of the batch was lost";
            for (auto& id : ids) {
                int again = now[id] - before[id];
                std::string was = durable.count(id) ? durable[id] : "not recorded";
                std::string state = env.state(id);
                if (was == "submitting" || was == "queued" || was == "processing" ||
                    was == "completed" || was == "failed")
                    EXPECT_EQ(again, 0)
                        << id << " was " << was << " at the cut and was submitted again";
                else
                    EXPECT_LE(again + sent_before[id], 1)
                        << id << " (" << was << " at the cut) reached the API before the cut and "
                        << "was submitted again";
                if (state == "completed") {
                    expect_completed_with_exact_media(env, id);
                    ++completed_after_cut;
                } else {
                    // Only an unknown submit outcome may fail a job here.
                    EXPECT_EQ(state, "failed") << id;
                    EXPECT_NE(str(env.job(id), "error").find("may or may not exist"),
                              std::string::npos)
                        << id << ": " << str(env.job(id), "error");
                }
            }
            EXPECT_EQ(env.stop(), 0);
            if (::testing::Test::HasFailure())
                return; // the first point that fails says enough
        }
    // Some cut before the end kept a completed job: the files' check was met, not skipped.
    EXPECT_GT(cuts_with_completed_jobs, 0);
    // And cuts with jobs durable as submitted and unfinished (the double-submit hazard),
    // and with files in accepted/ (kept by the names-kept model).
    EXPECT_GT(cuts_with_jobs_in_flight, 0);
    EXPECT_GT(cuts_with_accepted_files, 0);
    EXPECT_GT(completed_after_cut, 0);
    auto syncs = std::count_if(events.begin(), events.end(),
                               [](const sync_event& e) { return e.kind == 'F' || e.kind == 'D'; });
    std::cout << fmt::format("[ figures  ] {} changes recorded ({} syncs); {} cuts checked\n",
                             events.size(), syncs, checked);
}

} // namespace
