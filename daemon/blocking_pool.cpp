#include "daemon/blocking_pool.hpp"

#include <thread>

namespace klingd::daemon {

// What the threads and the pool share; the threads keep it alive after the pool has gone.
struct blocking_pool::shared {
    std::mutex m;
    std::condition_variable cv;
    std::deque<std::function<void()>> queue;
    bool gone = false;
    std::size_t busy = 0; // queued or running
    boost::asio::any_io_executor ex;
};

blocking_pool::blocking_pool(boost::asio::any_io_executor ex, std::size_t threads)
    : shared_(std::make_shared<shared>()) {
    shared_->ex = std::move(ex);
    for (std::size_t i = 0; i < threads; ++i)
        std::thread([s = shared_] {
            std::unique_lock lock(s->m);
            for (;;) {
                s->cv.wait(lock, [&] { return s->gone || !s->queue.empty(); });
                if (s->gone)
                    return;
                auto task = std::move(s->queue.front());
                s->queue.pop_front();
                lock.unlock();
                task();
                lock.lock();
                --s->busy;
                // What it captured goes after: its destruction says it has wholly ended.
                lock.unlock();
                task = nullptr;
                lock.lock();
            }
        }).detach();
}

blocking_pool::~blocking_pool() {
    close();
}

void blocking_pool::close() {
    std::deque<std::function<void()>> dropped;
    {
        std::lock_guard lock(shared_->m);
        shared_->gone = true;
        dropped.swap(shared_->queue);
        shared_->ex = {};
    }
    shared_->cv.notify_all();
}

bool blocking_pool::submit(std::function<void()> task) {
    {
        std::lock_guard lock(shared_->m);
        if (shared_->gone)
            return false;
        shared_->queue.push_back(std::move(task));
        ++shared_->busy;
    }
    shared_->cv.notify_one();
    return true;
}

void blocking_pool::deliver(const std::shared_ptr<shared>& s, std::function<void()> deliver) {
    // Posted under the lock: the pool's destructor (before the io_context's) waits for it.
    std::lock_guard lock(s->m);
    if (!s->gone)
        boost::asio::post(s->ex, std::move(deliver));
}

std::size_t blocking_pool::busy() const {
    std::lock_guard lock(shared_->m);
    return shared_->busy;
}

} // namespace klingd::daemon
