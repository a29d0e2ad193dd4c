// Result and media files of a job, written atomically into its output folder.
#include "daemon/downloader.hpp"

#include "daemon/output_dir.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <fmt/format.h>
#include <optional>

namespace klingd::daemon {

namespace {
constexpr int max_redirects = 5;

bool is_redirect(const download_result& r) {
    auto s = r.outcome.status;
    return r.outcome.how == core::http_outcome::transport::ok && !r.location.empty() &&
           (s == 301 || s == 302 || s == 303 || s == 307 || s == 308);
}
} // namespace

downloader::~downloader() {
    finish();
}

void downloader::finish() {
    files_.join();
}

template <class F>
boost::asio::awaitable<void> downloader::on_file_thread(F f) {
    co_await boost::asio::co_spawn(
        files_,
        [f = std::move(f)]() mutable -> boost::asio::awaitable<void> {
            f();
            co_return;
        },
        boost::asio::use_awaitable);
}

boost::asio::awaitable<core::event> downloader::fetch(std::string id, std::string result) {
    auto failed = [](std::string reason, bool retryable, bool local = false) -> core::event {
        return core::ev_download_failed{std::move(reason), retryable, local};
    };
    const std::string& root = settings_.output.directory;
    std::optional<boost::system::result<output_dir>> opened;
    co_await on_file_thread([&] { opened.emplace(output_dir::open(root, id)); });
    auto& dir = *opened;
    if (!dir)
        co_return failed(fmt::format("cannot use the output folder {}/{}: {}",
                                     settings_.output.directory, id, dir.error().message()),
                         true, true);
    boost::system::error_code written;
    co_await on_file_thread([&] {
        dir->remove_stale_temps(std::chrono::hours(24));
        written = dir->write_atomically("result.json", result);
    });
    if (auto ec = written)
        co_return failed(
            fmt::format("cannot write {}: {}", dir->final_path("result.json"), ec.message()), true,
            true);
    std::vector<std::string> paths{dir->final_path("result.json")};
    auto urls = core::output_urls(result);
    for (std::size_t i = 0; i < urls.size(); ++i) {
        auto u = core::http_url::parse(urls[i]);
        if (!u)
            co_return failed(
                fmt::format("output URL {} {}", urls[i].substr(0, 200), u.error().message()),
                false);
        std::string tmp = output_dir::temp_name(fmt::format("download-{}", i + 1));
        dir->remove(tmp);
        // CDNs redirect: up to max_redirects hops, never with the key (no download
        // carries it), https only (http to a loopback host).
        download_result r;
        for (int hop = 0;; ++hop) {
            r = co_await client_.download(*u, dir->temp_path(tmp),
                                          settings_.output.max_download_bytes);
            if (!is_redirect(r))
                break;
            dir->remove(tmp);
            if (hop == max_redirects)
                co_return failed(fmt::format("{} redirects more than {} times",
                                             urls[i].substr(0, 200), max_redirects),
                                 true);
            auto next = core::redirect_target(*u, r.location);
            if (!next) // the server may point somewhere usable next time
                co_return failed(next.error().message(), true);
            u = std::move(next);
        }
        const auto& o = r.outcome;
        if (o.too_large) {
            dir->remove(tmp);
            co_return failed(fmt::format("{} is larger than output.max_download_bytes ({})",
                                         urls[i].substr(0, 200),
                                         settings_.output.max_download_bytes),
                             false);
        }
        if (o.how != core::http_outcome::transport::ok || o.status < 200 || o.status >= 300) {
            dir->remove(tmp);
            co_return failed(o.how != core::http_outcome::transport::ok
                                 ? o.message
                                 : fmt::format("HTTP {} for {}", o.status, urls[i].substr(0, 200)),
                             true, o.local_io);
        }
        std::string ext = core::media_extension(urls[i], r.content_type);
        std::string name = i == 0 ? "output." + ext : fmt::format("output-{}.{}", i + 1, ext);
        boost::system::error_code committed;
        co_await on_file_thread([&] { committed = dir->commit(tmp, name); });
        if (auto ec = committed) {
            dir->remove(tmp);
            co_return failed(
                fmt::format("cannot write {}: {}", dir->final_path(name), ec.message()), true,
                true);
        }
        paths.push_back(dir->final_path(name));
    }
    co_return core::ev_download_done{std::move(paths)};
}

} // namespace klingd::daemon
