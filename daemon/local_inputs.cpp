// Local inputs: open a file only when it is what it claims to be and where it must be.
#include "daemon/local_inputs.hpp"

#include "core/url.hpp"

#include <algorithm>
#include <boost/json.hpp>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <fmt/format.h>
#include <grp.h>
#include <memory>
#include <openssl/evp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <unistd.h>

namespace klingd::daemon {
namespace json = boost::json;

namespace {

struct fd_guard {
    int fd = -1;
    ~fd_guard() {
        if (fd >= 0)
            ::close(fd);
    }
};

struct digest {
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx{EVP_MD_CTX_new(), EVP_MD_CTX_free};
    digest() { EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr); }
    void add(const void* p, std::size_t n) { EVP_DigestUpdate(ctx.get(), p, n); }
    std::string hex() {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned len = 0;
        EVP_DigestFinal_ex(ctx.get(), md, &len);
        std::string out;
        for (unsigned i = 0; i < len; ++i)
            out += fmt::format("{:02x}", md[i]);
        return out;
    }
};

bool inside(const std::string& path, const std::string& dir) {
    return path.size() > dir.size() + 1 && path.compare(0, dir.size(), dir) == 0 &&
           path[dir.size()] == '/';
}

bool inside_any(const std::string& path, const std::vector<std::string>& dirs) {
    for (auto& d : dirs)
        if (inside(path, d))
            return true;
    return false;
}

// The real folder path lies inside, if any.
const std::string* folder_of(const std::string& path, const std::vector<std::string>& dirs) {
    const std::string* best = nullptr; // the innermost, when folders nest
    for (auto& d : dirs)
        if (inside(path, d) && (!best || d.size() > best->size()))
            best = &d;
    return best;
}

std::string folder_list(const config::inputs_settings& cfg) {
    std::string out;
    for (auto& d : cfg.directories)
        out += (out.empty() ? "" : ", ") + d;
    return out;
}

// The uid every user reads as when not mapped into klingd's user namespace (the kernel's
// overflowuid, 65534 unless changed).
uid_t overflow_uid() {
    static const uid_t uid = [] {
        unsigned long v = 65534;
        if (std::FILE* f = std::fopen("/proc/sys/kernel/overflowuid", "re")) {
            if (std::fscanf(f, "%lu", &v) != 1)
                v = 65534;
            std::fclose(f);
        }
        return static_cast<uid_t>(v);
    }();
    return uid;
}

// Who submitted a job, as the kernel would see that user: uid, and every group.
struct submitter_id {
    uid_t uid;
    std::vector<gid_t> groups;
    bool known = false; // false: the groups cannot be told (no such user in the database)
};

submitter_id identity_of(const submitter& who) {
    submitter_id id{who.uid, {}, false};
    if (who.groups) { // what the kernel gave the process itself
        id.groups = *who.groups;
        id.known = true;
        return id;
    }
    std::vector<char> buf(16384);
    struct passwd pw {};
    struct passwd* found = nullptr;
    if (::getpwuid_r(who.uid, &pw, buf.data(), buf.size(), &found) != 0 || !found)
        return id;
    int n = 64;
    id.groups.resize(static_cast<std::size_t>(n));
    if (::getgrouplist(pw.pw_name, pw.pw_gid, id.groups.data(), &n) < 0) {
        id.groups.resize(static_cast<std::size_t>(n));
        if (::getgrouplist(pw.pw_name, pw.pw_gid, id.groups.data(), &n) < 0)
            return id;
    }
    id.groups.resize(static_cast<std::size_t>(n));
    id.known = true;
    return id;
}

// Whether klingd sees every user as the kernel does: not so in a user namespace that maps
// only some (systemd's PrivateUsers=), where every other uid and gid reads as 65534.
bool users_as_they_are() {
    for (auto file : {"/proc/self/uid_map", "/proc/self/gid_map"}) {
        fd_guard f;
        f.fd = ::open(file, O_RDONLY | O_CLOEXEC);
        if (f.fd < 0)
            return false;
        char buf[256];
        auto n = ::read(f.fd, buf, sizeof buf - 1);
        if (n <= 0)
            return false;
        buf[n] = '\0';
        unsigned long inside = 1, outside = 1, count = 0;
        if (std::sscanf(buf, "%lu %lu %lu", &inside, &outside, &count) != 3 || inside != 0 ||
            outside != 0 || count != 4294967295UL || std::strchr(buf, '\n') != buf + n - 1)
            return false;
    }
    return true;
}

// The kernel's rule for one permission: the owner's bits for the owner, else the group's
// for a member, else the others' (only the first class that applies counts; ACLs are not
// read, so a file they open to the user is refused).
bool permits(const struct stat& st, const submitter_id& who, mode_t owner_bit, mode_t group_bit,
             mode_t other_bit) {
    if (st.st_uid == who.uid)
        return (st.st_mode & owner_bit) != 0;
    if (std::find(who.groups.begin(), who.groups.end(), st.st_gid) != who.groups.end())
        return (st.st_mode & group_bit) != 0;
    return (st.st_mode & other_bit) != 0;
}

// Whether the file or folder behind fd (any kind of descriptor) carries an ACL, which
// the check below does not read (it may open or close what the bits say): such are
// refused for other users.
bool has_acl(int fd) {
    auto at = fmt::format("/proc/self/fd/{}", fd);
    for (auto name : {"system.posix_acl_access", "system.nfs4_acl"}) {
        if (::getxattr(at.c_str(), name, nullptr, 0) >= 0)
            return true;
        if (!(errno == ENODATA || errno == ENOTSUP || errno == EOPNOTSUPP))
            return true; // cannot tell: refused
    }
    return false;
}

// Whether who may search (look a name up in) the folder behind fd, as the kernel decides
// (its attributes as cached: a network file system's server is not asked for them).
bool may_search(int fd, const submitter_id& who) {
    struct statx sx {};
    if (::statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_MODE | STATX_UID | STATX_GID,
                &sx) != 0)
        return false;
    struct stat st {};
    st.st_mode = sx.stx_mode;
    st.st_uid = sx.stx_uid;
    st.st_gid = sx.stx_gid;
    return permits(st, who, S_IXUSR, S_IXGRP, S_IXOTH) && !has_acl(fd);
}

// Whether who may read the file st describes (behind fd), as the kernel decides.
bool may_read(const struct stat& st, int fd, const submitter_id& who) {
    return permits(st, who, S_IRUSR, S_IRGRP, S_IROTH) && !has_acl(fd);
}

// Where a walk ended.
enum class walk_end {
    reached,     // the path names what walked.f holds
    outside,     // it leads outside the folders (nothing there was looked up)
    mount,       // it crosses a mount inside the folders
    not_allowed, // the submitter may not search a folder on the way
    changed,     // a name changed while it was looked up
    failed,      // errno says why (ENOENT, ENOTDIR, ELOOP, ...)
};

struct walked {
    fd_guard f;       // O_PATH on what the path names, every link followed
    std::string real; // its path, with no link in it
    struct stat st {};
    dev_t folder_dev = 0;        // the device of the innermost folder it is in, as held
    bool folder_passed = false;  // whether it is in one (folder_dev is set)
    int err = 0;                 // errno when failed
    bool mounts_unknown = false; // mount: the kernel cannot tell mount points (before 5.8)
};

// What a name in a folder is, without following a link, triggering an automount or
// asking a network or FUSE file system for fresh attributes (a hung server must not hold
// the thread here). name "": what dir itself is.
struct looked {
    struct statx sx {};
    bool mount_root = false;     // the root of a mount (also when the kernel cannot tell)
    bool mounts_unknown = false; // the kernel cannot tell (Linux before 5.8)
    bool automount = false;      // a point where something would be mounted
};

bool look(int dir, const char* name, looked& l) {
    if (::statx(dir, name,
                AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT | AT_STATX_DONT_SYNC |
                    (*name ? 0 : AT_EMPTY_PATH),
                STATX_TYPE | STATX_MODE | STATX_INO | STATX_UID, &l.sx) != 0)
        return false;
    l.mounts_unknown = (l.sx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) == 0;
    l.mount_root = l.mounts_unknown || (l.sx.stx_attributes & STATX_ATTR_MOUNT_ROOT) != 0;
    l.automount = (l.sx.stx_attributes & STATX_ATTR_AUTOMOUNT) != 0;
    return true;
}

bool same(const struct statx& a, const struct statx& b) {
    return a.stx_dev_major == b.stx_dev_major && a.stx_dev_minor == b.stx_dev_minor &&
           a.stx_ino == b.stx_ino;
}

// Walks path from "/" as the kernel would resolve it (every symlink followed, "..", a
// trailing "/" only after a folder), but one name at a time, each folder held by an
// O_PATH descriptor while the next name is looked up beneath it, and links read by
// klingd itself: a folder swapped for a link in between ends the walk instead of leading
// it elsewhere. Nothing is looked up that is not on the way to or inside the folders
// (real; or on the way to a folder as configured, spelled, which may be a link): a link
// leading elsewhere (a dead network mount, an automounter) ends the walk before anything
// there is touched. Below the folders no mount is crossed (a FUSE, NFS or automount
// placed there could hang the thread or hold anything). When who is given, that user
// must be able to search every folder passed: the named path's, the links', the real
// path's.
walk_end walk_within(walked& w, const std::string& path, const std::vector<std::string>& real,
                     const std::vector<std::string>& spelled, const submitter_id* who) {
    // A folder, or one above it: the administrator's path, not a user's.
    auto at_or_above = [](const std::string& p, const std::vector<std::string>& dirs) {
        for (auto& d : dirs)
            if (p == d || inside(d, p))
                return true;
        return false;
    };
    std::vector<std::string> todo; // names still to walk, the next one last
    auto push_path = [&](std::string_view p) {
        std::vector<std::string> parts;
        for (std::size_t at = 0; at <= p.size();) {
            auto slash = p.find('/', at);
            if (slash == std::string_view::npos)
                slash = p.size();
            if (slash > at)
                parts.emplace_back(p.substr(at, slash - at));
            at = slash + 1;
        }
        if (!parts.empty() && p.back() == '/')
            parts.emplace_back("."); // a trailing "/": what it ends on must be a folder
        todo.insert(todo.end(), parts.rbegin(), parts.rend());
    };
    // The folders held, "/" first, with their paths ("" for "/").
    std::vector<int> fds;
    std::vector<std::string> names;
    struct closer {
        std::vector<int>& fds;
        ~closer() {
            for (int fd : fds)
                ::close(fd);
        }
    } closes{fds};
    auto fail = [&](int e) {
        w.err = e;
        return walk_end::failed;
    };
    auto up = [&] {
        ::close(fds.back());
        fds.pop_back();
        names.pop_back();
    };
    int root = ::open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (root < 0)
        return fail(errno);
    fds.push_back(root);
    names.emplace_back();
    push_path(path);
    int links = 0;
    while (!todo.empty()) {
        auto part = std::move(todo.back());
        todo.pop_back();
        const int dir = fds.back();
        if (who && !may_search(dir, *who))
            return walk_end::not_allowed;
        if (part == ".")
            continue; // what is held is a folder
        if (part == "..") {
            if (fds.size() > 1)
                up();
            continue;
        }
        auto next = names.back() + "/" + part;
        // Below a folder: a user's ground, even above or at another folder nested in it
        // (a user who may write there could have put anything in its place). Outside
        // every folder, a folder itself or a name on the way to one: the administrator's.
        const bool below = inside_any(next, real);
        const bool admins = !below && (at_or_above(next, real) || at_or_above(next, spelled));
        if (!admins && !below)
            return walk_end::outside;
        looked l;
        if (!look(dir, part.c_str(), l))
            return fail(errno);
        const auto& sx = l.sx;
        looked here;
        if (!look(dir, "", here))
            return fail(errno);
        // Below a folder, no other file system (a folder may itself be a mount, unless it
        // is nested in another: a mount inside a folder is crossed by no walk, as a user
        // who may write there could have made it).
        if (below && (l.mount_root || l.automount || sx.stx_dev_major != here.sx.stx_dev_major ||
                      sx.stx_dev_minor != here.sx.stx_dev_minor)) {
            w.mounts_unknown = l.mounts_unknown;
            return walk_end::mount;
        }
        // The kernel's fs.protected_symlinks: another user's link in a sticky folder open to
        // all (/tmp) is not followed for the submitter unless the folder's owner made it.
        if (who && S_ISLNK(sx.stx_mode) && sx.stx_uid != who->uid &&
            (here.sx.stx_mode & (S_ISVTX | S_IWOTH)) == (S_ISVTX | S_IWOTH) &&
            here.sx.stx_uid != sx.stx_uid)
            return walk_end::not_allowed;
        if (S_ISLNK(sx.stx_mode)) {
            if (++links > 40)
                return fail(ELOOP);
            char buf[PATH_MAX];
            auto n = ::readlinkat(dir, part.c_str(), buf, sizeof buf - 1);
            if (n < 0)
                return fail(errno);
            if (n == 0)
                return fail(ENOENT);
            std::string_view target(buf, static_cast<std::size_t>(n));
            if (target.front() == '/')
                while (fds.size() > 1)
                    up();
            push_path(target);
            continue;
        }
        const bool folder = S_ISDIR(sx.stx_mode);
        if (!folder && !todo.empty())
            return fail(ENOTDIR);
        // Below a folder, no O_DIRECTORY: with it the kernel would trigger an automount
        // (the kind is known from the look, and checked again below). On the
        // administrator's path it does: a folder under an automount (autofs, systemd's
        // x-systemd.automount) is mounted again after it expired.
        int fd = ::openat(dir, part.c_str(),
                          O_PATH | O_NOFOLLOW | O_CLOEXEC | (admins && folder ? O_DIRECTORY : 0));
        if (fd < 0)
            return fail(errno);
        looked got;
        if (!look(fd, "", got)) {
            ::close(fd);
            return fail(errno);
        }
        const bool kind_kept = (got.sx.stx_mode & S_IFMT) == (sx.stx_mode & S_IFMT);
        if (!kind_kept || (!same(got.sx, sx) && !admins)) {
            // swapped between the look and the open (or, on the administrator's path, a
            // folder mounted by the open: what was opened is a folder, and is walked on)
            ::close(fd);
            return walk_end::changed;
        }
        if (!folder) {
            w.f.fd = fd;
            w.real = std::move(next);
            break;
        }
        fds.push_back(fd);
        names.push_back(std::move(next));
    }
    if (w.f.fd < 0) { // the path names a folder: what is held last
        w.real = names.back().empty() ? "/" : names.back();
        w.f.fd = ::fcntl(fds.back(), F_DUPFD_CLOEXEC, 0);
        if (w.f.fd < 0)
            return fail(errno);
    }
    if (::fstat(w.f.fd, &w.st) != 0)
        return fail(errno);
    // The innermost folder it is in, as held now (not looked up again by its path, which
    // may lead elsewhere by now): its device, for the caller's check.
    for (std::size_t i = names.size(); i-- > 0;) {
        if (std::find(real.begin(), real.end(), names[i]) == real.end() ||
            !inside(w.real, names[i]))
            continue;
        looked f;
        if (!look(fds[i], "", f))
            return fail(errno);
        w.folder_dev = makedev(f.sx.stx_dev_major, f.sx.stx_dev_minor);
        w.folder_passed = true;
        break;
    }
    return walk_end::reached;
}

// The file behind path, opened for reading when it is acceptable; else why not.
struct opened {
    fd_guard f;
    std::string real;
    std::int64_t bytes = 0;
    dev_t dev = 0;
    ino_t ino = 0;
    std::string problem;
};

void open_checked(opened& o, const std::string& path, const config::inputs_settings& cfg,
                  const std::optional<submitter>& who = std::nullopt) {
    if (cfg.directories.empty()) {
        o.problem = "names a local file, but [inputs] directories is empty: this klingd takes "
                    "no local files";
        return;
    }
    const auto& dirs = cfg.real_directories;
    // A user other than root and klingd's own learns nothing of what lies where that user
    // may not look: a missing file, a link that leads out, a mount, a file or a folder that
    // user may not read all get this one answer (no probing through klingd's rights). Root
    // and klingd's user get the precise reason.
    // (The overflow uid is never klingd's own: in a user namespace every unmapped user
    // reads so, and klingd may run as nobody.)
    const bool restricted =
        who && who->uid != 0 && (who->uid != ::geteuid() || who->uid == overflow_uid());
    auto hidden = [&](std::string precise) {
        return restricted
                   ? fmt::format("does not exist inside [inputs] directories ({}) as a file the "
                                 "user who submitted the job (uid {}) may read",
                                 folder_list(cfg), who->uid)
                   : precise;
    };
    if (restricted && !users_as_they_are()) {
        o.problem = "names a local file, but klingd runs in a user namespace (systemd "
                    "PrivateUsers=) where it cannot tell other users' files and rights apart: "
                    "only root's and klingd's own jobs may name local files there";
        return;
    }
    // By its text first: nothing outside the folders is even looked at (no probing of
    // other paths, no waiting on a dead mount elsewhere).
    if (!inside_any(path, cfg.directories) && !inside_any(path, dirs)) {
        o.problem = fmt::format("is outside [inputs] directories ({})", folder_list(cfg));
        return;
    }
    submitter_id id{};
    if (restricted) {
        id = identity_of(*who);
        if (!id.known) {
            o.problem = fmt::format(
                "names a local file, but the user who submitted the job (uid {}) has no entry "
                "in the user database: klingd cannot tell that user's groups, so it cannot "
                "check what that user may read",
                who->uid);
            return;
        }
    }
    walked w;
    const auto outside =
        fmt::format("resolves to a path outside [inputs] directories ({})", folder_list(cfg));
    switch (walk_within(w, path, dirs, cfg.directories, restricted ? &id : nullptr)) {
    case walk_end::reached:
        break;
    case walk_end::outside:
        o.problem = hidden(outside);
        return;
    case walk_end::mount:
        o.problem = hidden(
            w.mounts_unknown
                ? "cannot be checked: this kernel does not tell mount points apart (Linux 5.8 "
                  "or later is needed to take local files)"
                : "is behind a mount inside its [inputs] folder (another file system, a bind "
                  "mount, an automount or a subvolume there): copy the file into the folder "
                  "itself");
        return;
    case walk_end::not_allowed:
        o.problem = hidden("");
        return;
    case walk_end::changed:
        o.problem = hidden("changed while it was checked");
        return;
    case walk_end::failed:
        o.problem = hidden(fmt::format("cannot be resolved: {}", std::strerror(w.err)));
        return;
    }
    o.real = w.real;
    const std::string* folder = folder_of(o.real, dirs);
    if (!folder && std::find(dirs.begin(), dirs.end(), o.real) != dirs.end()) {
        o.problem = hidden("names an [inputs] folder itself, not a file in it");
        return;
    }
    if (!folder) {
        o.problem = hidden(outside);
        return;
    }
    // What it names now, whatever happened to the path's folders since they were passed.
    char buf[PATH_MAX];
    auto proc = fmt::format("/proc/self/fd/{}", w.f.fd);
    auto n = ::readlink(proc.c_str(), buf, sizeof buf - 1);
    if (n <= 0) {
        o.problem =
            hidden(fmt::format("cannot be checked: {}", n < 0 ? std::strerror(errno) : "no path"));
        return;
    }
    // Where it really is must be where the walk says: a folder on the way renamed
    // meanwhile makes the two differ (the path recorded would not be the file's).
    const std::string now_at(buf, static_cast<std::size_t>(n));
    if (now_at != w.real && inside(now_at, *folder)) {
        o.problem = hidden("changed while it was checked");
        return;
    }
    if (!inside(now_at, *folder)) {
        o.problem = hidden(fmt::format(
            "was moved outside [inputs] directories ({}) while it was checked", folder_list(cfg)));
        return;
    }
    // Before anything is said about what it is (a folder, a FIFO, its size).
    if (restricted && !may_read(w.st, w.f.fd, id)) {
        o.problem = hidden("");
        return;
    }
    if (!S_ISREG(w.st.st_mode)) {
        o.problem = "is not a regular file";
        return;
    }
    // Opened for reading through that same handle: no device is opened, nothing read
    // before this point.
    o.f.fd = ::open(proc.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (o.f.fd < 0) {
        o.problem = fmt::format("cannot be opened: {}", std::strerror(errno));
        return;
    }
    struct stat st {};
    if (::fstat(o.f.fd, &st) != 0) {
        o.problem = fmt::format("cannot be read: {}", std::strerror(errno));
        return;
    }
    if (st.st_dev != w.st.st_dev || st.st_ino != w.st.st_ino) {
        o.problem = "was replaced while it was checked";
        return;
    }
    // The same file, its rights read again (a chmod in between).
    if (restricted && !may_read(st, o.f.fd, id)) {
        o.problem = hidden("");
        return;
    }
    if (!S_ISREG(st.st_mode)) {
        o.problem = "is not a regular file";
        return;
    }
    // A file on another file system (a mount inside the folder) or with more than one name
    // (a hard link) may be a door to a file from elsewhere.
    if (!w.folder_passed || st.st_dev != w.folder_dev) {
        o.problem = "is on another file system than its [inputs] folder: copy it into the folder";
        return;
    }
    if (st.st_nlink != 1) {
        o.problem = fmt::format("has {} hard links: a file with more than one name may be one "
                                "from outside [inputs] directories; copy it instead",
                                st.st_nlink);
        return;
    }
    if (static_cast<std::uint64_t>(st.st_size) > cfg.max_bytes) {
        o.problem =
            fmt::format("is {} bytes, above inputs.max_bytes ({})", st.st_size, cfg.max_bytes);
        return;
    }
    if (st.st_size == 0) {
        o.problem = "is empty";
        return;
    }
    // A FIFO swapped in would have been refused above; the descriptor may block now.
    int fl = ::fcntl(o.f.fd, F_GETFL);
    if (fl >= 0)
        ::fcntl(o.f.fd, F_SETFL, fl & ~O_NONBLOCK);
    o.bytes = st.st_size;
    o.dev = st.st_dev;
    o.ino = st.st_ino;
}

// Reads up to n bytes, retrying short reads; the number read, or -1.
ssize_t read_full(int fd, char* p, std::size_t n) {
    std::size_t got = 0;
    while (got < n) {
        auto r = ::read(fd, p + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        got += static_cast<std::size_t>(r);
    }
    return static_cast<ssize_t>(got);
}

bool is_image(std::string_view mime) {
    return mime.starts_with("image/");
}

std::string_view want_name(core::media_want w) {
    switch (w) {
    case core::media_want::image:
        return "an image";
    case core::media_want::video:
        return "a video";
    default:
        return "an image or a video";
    }
}

} // namespace

std::string sniff_media(std::string_view h) {
    auto at = [&](std::size_t off, std::string_view magic) {
        return h.size() >= off + magic.size() && h.substr(off, magic.size()) == magic;
    };
    if (at(0, "\x89PNG\r\n\x1a\n"))
        return "image/png";
    if (at(0, "\xff\xd8\xff"))
        return "image/jpeg";
    if (at(0, "GIF87a") || at(0, "GIF89a"))
        return "image/gif";
    if (at(0, "RIFF") && at(8, "WEBP"))
        return "image/webp";
    if (at(4, "ftyp")) {
        // Still images in the same container (HEIF, AVIF): not a kind the API takes.
        for (auto brand : {"heic", "heix", "hevc", "heim", "heis", "mif1", "msf1", "avif", "avis"})
            if (at(8, brand))
                return {};
        return at(8, "qt  ") ? "video/quicktime" : "video/mp4";
    }
    if (at(0, "\x1a\x45\xdf\xa3"))
        return "video/webm";
    return {};
}

core::result<std::vector<core::local_input>>
check_local_inputs(const std::vector<core::local_ref>& refs, const config::inputs_settings& cfg,
                   const std::optional<submitter>& who) {
    std::vector<core::local_input> out;
    auto bad = [](const core::local_ref& r, const std::string& why) {
        return core::error(core::errc::invalid_job,
                           fmt::format("{} \"{}\" {}", r.where, r.url.substr(0, 300), why));
    };
    if (refs.size() > cfg.max_files)
        return core::error(core::errc::invalid_job,
                           fmt::format("params names {} local files; at most {} are taken",
                                       refs.size(), cfg.max_files));
    std::vector<std::pair<dev_t, ino_t>> seen; // parallel to out
    for (const auto& r : refs) {
        opened o;
        open_checked(o, r.path, cfg, who);
        if (!o.problem.empty())
            return bad(r, o.problem);
        // The kind first, from the first bytes: nothing is hashed that would be refused.
        char head_buf[16] = {};
        auto h = ::pread(o.f.fd, head_buf, sizeof head_buf, 0);
        if (h < 0)
            return bad(r, fmt::format("cannot be read: {}", std::strerror(errno)));
        auto mime = sniff_media(std::string_view(head_buf, static_cast<std::size_t>(h)));
        if (mime.empty())
            return bad(r, fmt::format("is not {} klingd knows by its content (PNG, JPEG, WebP, "
                                      "GIF; MP4, MOV, WebM)",
                                      want_name(r.want)));
        if (r.want == core::media_want::image && !is_image(mime))
            return bad(r, fmt::format("holds {} by its content: this field takes an image", mime));
        if (r.want == core::media_want::video && is_image(mime))
            return bad(r, fmt::format("holds {} by its content: this field takes a video", mime));
        // The same file named twice (in two fields, or in two spellings): read once; each
        // spelling gets its row, so every URL in params has its hosted URL.
        auto same = std::find(seen.begin(), seen.end(), std::pair{o.dev, o.ino});
        if (same != seen.end()) {
            auto copy = out[static_cast<std::size_t>(same - seen.begin())];
            if (std::none_of(out.begin(), out.end(), [&](auto& i) { return i.url == r.url; })) {
                copy.url = r.url;
                out.push_back(std::move(copy));
                seen.emplace_back(o.dev, o.ino);
            }
            continue;
        }
        digest d;
        std::vector<char> buf(1 << 20);
        std::int64_t total = 0;
        for (;;) {
            auto n = read_full(o.f.fd, buf.data(), buf.size());
            if (n < 0)
                return bad(r, fmt::format("cannot be read: {}", std::strerror(errno)));
            if (n == 0)
                break;
            d.add(buf.data(), static_cast<std::size_t>(n));
            total += n;
            if (static_cast<std::uint64_t>(total) > cfg.max_bytes)
                return bad(r, fmt::format("grew above inputs.max_bytes ({}) while it was read",
                                          cfg.max_bytes));
        }
        out.push_back({r.url, o.real, d.hex(), total, std::move(mime), std::nullopt});
        seen.emplace_back(o.dev, o.ino);
    }
    return out;
}

core::result<std::string> upload_body(const core::local_input& in,
                                      const config::inputs_settings& cfg) {
    auto bad = [&](const std::string& why) {
        return core::error(core::errc::invalid_job,
                           fmt::format("input \"{}\" {}", in.url.substr(0, 300), why));
    };
    // One answer for whatever happened to it since: the job's error is for every socket
    // user to read, and what klingd finds where a link now leads (with its own rights, no
    // submitter known here) must not be told (exists, kind, size, links).
    const std::string gone = "is no longer the file taken in at intake (gone, moved, replaced, "
                             "changed, or refused by [inputs] now): not uploaded";
    opened o; // walked again from "/": where a link now leads is checked before it is opened
    open_checked(o, in.path, cfg);
    if (!o.problem.empty() || o.real != in.path || o.bytes != in.bytes)
        return bad(gone);
    std::string prefix = fmt::format(R"({{"data_urls":["data:{};base64,)", in.mime);
    std::string body;
    body.reserve(prefix.size() + 4 * ((static_cast<std::size_t>(in.bytes) + 2) / 3) + 8);
    body += prefix;
    digest d;
    constexpr std::size_t chunk = 3 * 65536; // a multiple of 3: no padding but at the end
    std::vector<char> buf(chunk);
    std::int64_t total = 0;
    for (;;) {
        auto n = read_full(o.f.fd, buf.data(), chunk);
        if (n < 0)
            return bad(fmt::format("cannot be read: {}", std::strerror(errno)));
        if (n == 0)
            break;
        total += n;
        if (total > in.bytes)
            return bad("changed since it was taken in (it grew)");
        d.add(buf.data(), static_cast<std::size_t>(n));
        auto at = body.size();
        body.resize(at + 4 * ((static_cast<std::size_t>(n) + 2) / 3) + 1);
        int w = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(body.data() + at),
                                reinterpret_cast<const unsigned char*>(buf.data()),
                                static_cast<int>(n));
        body.resize(at + static_cast<std::size_t>(w));
        if (static_cast<std::size_t>(n) < chunk)
            break; // the end (read_full fills the chunk unless the file ends)
    }
    if (total != in.bytes || d.hex() != in.sha256)
        return bad("changed since it was taken in (its SHA-256 differs): not uploaded");
    body += "\"]}";
    return body;
}

std::string hosted_url_of(std::string_view body) {
    boost::system::error_code ec;
    auto v = json::parse(body, ec);
    if (ec || !v.is_object())
        return {};
    for (auto key : {"file_urls", "urls"}) {
        auto* a = v.as_object().if_contains(key);
        if (!a || !a->is_array() || a->as_array().empty() || !a->as_array()[0].is_string())
            continue;
        std::string_view u = a->as_array()[0].as_string();
        if (core::http_url::parse(u))
            return std::string(u);
    }
    return {};
}

} // namespace klingd::daemon
