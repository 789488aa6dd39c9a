// A vCPU's KVM_RUN on a thread of its own, so that a guest that runs (or spins) never
// blocks Node's event loop. run() posts one KVM_RUN to the thread and returns a promise of
// the exit, decoded into a plain object on the main thread; the vCPU stays stopped until
// JS asks for the next run, so an exit's handler (a conversion) finishes before the guest
// resumes. stop() is QEMU's and the selftests' kick: set kvm_run.immediate_exit, then signal
// the thread, so KVM_RUN returns EINTR whether the thread is inside it or about to enter.
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>

#include <condition_variable>
#include <cstring>
#include <mutex>
#include <optional>
#include <thread>

#include "args.h"
#include "uapi_vcpu.h"

namespace {

int KickSignal() { return SIGRTMIN + 5; }

// No SA_RESTART: the signal's only job is to make KVM_RUN return EINTR.
void InstallKickHandler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction action {};
    action.sa_handler = [](int) {};
    sigemptyset(&action.sa_mask);
    sigaction(KickSignal(), &action, nullptr);
  });
}

struct RunResult {
  int result;
  int error;
};

class VcpuRunner;
void DeliverRun(Napi::Env env, Napi::Function, VcpuRunner* runner, RunResult* result);
using RunDelivery = Napi::TypedThreadSafeFunction<VcpuRunner, RunResult, DeliverRun>;

class VcpuRunner : public Napi::ObjectWrap<VcpuRunner> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "VcpuRunner",
                       {
                           InstanceMethod<&VcpuRunner::Run>("run"),
                           InstanceMethod<&VcpuRunner::Stop>("stop"),
                           InstanceMethod<&VcpuRunner::CompleteHypercall>("completeHypercall"),
                           InstanceMethod<&VcpuRunner::CompleteIo>("completeIo"),
                           InstanceMethod<&VcpuRunner::CompleteMmio>("completeMmio"),
                           InstanceMethod<&VcpuRunner::Close>("close"),
                       });
  }

  // new VcpuRunner(vcpuFd, mmapSize): maps the vCPU's kvm_run; the fd stays the caller's
  // and must outlive the runner (close() the runner first).
  explicit VcpuRunner(const Napi::CallbackInfo& info) : Napi::ObjectWrap<VcpuRunner>(info) {
    Args args(info);
    fd_ = args.Fd(0);
    uint64_t size = args.U64(1, "mmapSize");
    if (size < sizeof(uapi::kvm_run) || size > (1u << 20)) throw ArgumentError(info.Env(), "mmapSize must be KVM_GET_VCPU_MMAP_SIZE's answer");
    void* address = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    if (address == MAP_FAILED) throw ErrnoError(info.Env(), errno, "mmap(kvm_run)");
    run_ = static_cast<uapi::kvm_run*>(address);
    mmap_size_ = size;
    InstallKickHandler();
    delivery_ = RunDelivery::New(info.Env(), "guestmem-vcpu", 0, 1, this);
    // An idle vCPU must not keep Node alive; a KVM_RUN in flight does (Run refs it).
    delivery_.Unref(info.Env());
    // The runner lives until close(), not until GC: its thread and the delivery function
    // must be shut down in that order, by close() or, at the latest, when Node's
    // environment goes (cleanup hooks run newest first, so this one before the delivery's).
    Ref();
    env_ = info.Env();
    napi_add_env_cleanup_hook(env_, &VcpuRunner::AtEnvExit, this);
  }

  ~VcpuRunner() override { Shutdown(); }

  static void AtEnvExit(void* runner) { static_cast<VcpuRunner*>(runner)->Shutdown(); }

  // Called on the main thread when a KVM_RUN returns.
  void Finish(Napi::Env env, RunResult result) {
    Napi::Promise::Deferred deferred = std::move(*pending_);
    pending_.reset();
    if (!closed_) delivery_.Unref(env);
    try {
      if (closed_) {
        deferred.Reject(ClosedError(env).Value());
      } else if (result.result < 0 && result.error != EINTR &&
                 !(result.error == EFAULT && run_->exit_reason == uapi::KVM_EXIT_MEMORY_FAULT)) {
        // KVM reports a memory fault as -EFAULT with the exit filled in: that is an exit.
        deferred.Reject(ErrnoError(env, result.error, "ioctl(KVM_RUN)").Value());
      } else {
        deferred.Resolve(DecodeExit(env, result));
      }
    } catch (const Napi::Error& error) {
      deferred.Reject(error.Value());
    }
    Unref();
  }

 private:
  Napi::Value Run(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed_) throw ClosedError(env);
    if (pending_) throw Napi::Error::New(env, "a KVM_RUN of this vCPU is already in flight");
    if (!thread_.joinable()) thread_ = std::thread(&VcpuRunner::ThreadMain, this);
    pending_.emplace(Napi::Promise::Deferred::New(env));
    Napi::Promise promise = pending_->Promise();
    // The runner must live until the result is delivered, whatever JS drops meanwhile.
    Ref();
    delivery_.Ref(env);
    {
      std::lock_guard<std::mutex> guard(lock_);
      requested_ = true;
    }
    wake_.notify_one();
    return promise;
  }

  // Sticky: every later KVM_RUN returns EINTR at once.
  Napi::Value Stop(const Napi::CallbackInfo& info) {
    Kick();
    return info.Env().Undefined();
  }

  // The hypercall's return value, which the guest finds in rax when it resumes. Since KVM's
  // 2024 rework the VMM must always write it.
  Napi::Value CompleteHypercall(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CheckLastExit(env, uapi::KVM_EXIT_HYPERCALL, "a hypercall");
    run_->hypercall.ret = SignedU64(info[0], "ret");
    return env.Undefined();
  }

  // The bytes an IN instruction reads: size * count of them.
  Napi::Value CompleteIo(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CheckLastExit(env, uapi::KVM_EXIT_IO, "port I/O");
    if (run_->io.direction != uapi::KVM_EXIT_IO_IN) throw Napi::Error::New(env, "the last exit was an OUT: there is nothing to complete");
    size_t length = IoLength();
    Napi::Uint8Array data = BytesArg(info, 0, length, "data");
    std::memcpy(reinterpret_cast<uint8_t*>(run_) + run_->io.data_offset, data.Data(), length);
    return env.Undefined();
  }

  // The bytes an MMIO read returns.
  Napi::Value CompleteMmio(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CheckLastExit(env, uapi::KVM_EXIT_MMIO, "MMIO");
    if (run_->mmio.is_write) throw Napi::Error::New(env, "the last exit was an MMIO write: there is nothing to complete");
    Napi::Uint8Array data = BytesArg(info, 0, run_->mmio.len, "data");
    std::memcpy(run_->mmio.data, data.Data(), run_->mmio.len);
    return env.Undefined();
  }

  // Stops the thread (kicking it out of KVM_RUN), joins it and unmaps kvm_run. A run in
  // flight is rejected with ERR_GUESTMEM_CLOSED when its result arrives.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (!closed_) {
      Shutdown();
      napi_remove_env_cleanup_hook(env_, &VcpuRunner::AtEnvExit, this);
      Unref();
    }
    return info.Env().Undefined();
  }

  void ThreadMain() {
    // Only the kick may interrupt this thread; the process's signals go to Node's threads.
    sigset_t mask;
    sigfillset(&mask);
    sigdelset(&mask, KickSignal());
    pthread_sigmask(SIG_SETMASK, &mask, nullptr);
    pthread_setname_np(pthread_self(), "guestmem-vcpu");
    for (;;) {
      {
        std::unique_lock<std::mutex> guard(lock_);
        wake_.wait(guard, [this] { return requested_ || quitting_; });
        if (quitting_) return;
        requested_ = false;
      }
      int result = ioctl(fd_, uapi::KVM_RUN, 0);
      auto* outcome = new RunResult{result, result < 0 ? errno : 0};
      if (delivery_.BlockingCall(outcome) != napi_ok) {
        delete outcome;
        return;
      }
    }
  }

  void Kick() {
    if (run_ == nullptr) return;
    __atomic_store_n(&run_->immediate_exit, 1, __ATOMIC_SEQ_CST);
    std::lock_guard<std::mutex> guard(lock_);
    if (thread_.joinable()) pthread_kill(thread_.native_handle(), KickSignal());
  }

  void Shutdown() {
    if (closed_) return;
    closed_ = true;
    {
      std::lock_guard<std::mutex> guard(lock_);
      quitting_ = true;
    }
    wake_.notify_one();
    Kick();
    if (thread_.joinable()) thread_.join();
    delivery_.Release();
    munmap(run_, mmap_size_);
    run_ = nullptr;
  }

  Napi::Object DecodeExit(Napi::Env env, RunResult result) {
    Napi::Object exit = Napi::Object::New(env);
    uint32_t reason = result.result < 0 && result.error == EINTR ? uapi::KVM_EXIT_INTR : run_->exit_reason;
    exit.Set("exitReason", Napi::Number::New(env, reason));
    auto set = [&](const char* name, Napi::Value value) { exit.Set(name, value); };
    auto number = [&](double value) { return Napi::Number::New(env, value); };
    auto big = [&](uint64_t value) { return U64Value(env, value); };
    switch (reason) {
      case uapi::KVM_EXIT_IO: {
        bool out = run_->io.direction == uapi::KVM_EXIT_IO_OUT;
        set("reason", Napi::String::New(env, "io"));
        set("direction", Napi::String::New(env, out ? "out" : "in"));
        set("port", number(run_->io.port));
        set("size", number(run_->io.size));
        set("count", number(run_->io.count));
        if (out) set("data", Napi::Buffer<uint8_t>::Copy(env, reinterpret_cast<uint8_t*>(run_) + run_->io.data_offset, IoLength()));
        break;
      }
      case uapi::KVM_EXIT_MMIO:
        set("reason", Napi::String::New(env, "mmio"));
        set("address", big(run_->mmio.phys_addr));
        set("length", number(run_->mmio.len));
        set("isWrite", Napi::Boolean::New(env, run_->mmio.is_write != 0));
        if (run_->mmio.is_write) set("data", Napi::Buffer<uint8_t>::Copy(env, run_->mmio.data, std::min<uint32_t>(run_->mmio.len, 8)));
        break;
      case uapi::KVM_EXIT_HYPERCALL: {
        set("reason", Napi::String::New(env, "hypercall"));
        set("nr", big(run_->hypercall.nr));
        Napi::Array args = Napi::Array::New(env, 6);
        for (uint32_t i = 0; i < 6; i++) args.Set(i, big(run_->hypercall.args[i]));
        set("args", args);
        set("flags", big(run_->hypercall.flags));
        set("longMode", Napi::Boolean::New(env, (run_->hypercall.flags & 1) != 0));
        break;
      }
      case uapi::KVM_EXIT_MEMORY_FAULT:
        set("reason", Napi::String::New(env, "memory-fault"));
        set("flags", big(run_->memory_fault.flags));
        set("gpa", big(run_->memory_fault.gpa));
        set("size", big(run_->memory_fault.size));
        break;
      case uapi::KVM_EXIT_HLT:
        set("reason", Napi::String::New(env, "hlt"));
        break;
      case uapi::KVM_EXIT_INTR:
        set("reason", Napi::String::New(env, "intr"));
        break;
      case uapi::KVM_EXIT_SHUTDOWN:
        set("reason", Napi::String::New(env, "shutdown"));
        break;
      case uapi::KVM_EXIT_FAIL_ENTRY:
        set("reason", Napi::String::New(env, "fail-entry"));
        set("hardwareEntryFailureReason", big(run_->fail_entry.hardware_entry_failure_reason));
        set("cpu", number(run_->fail_entry.cpu));
        break;
      case uapi::KVM_EXIT_INTERNAL_ERROR:
      case uapi::KVM_EXIT_SYSTEM_EVENT: {
        bool internal = reason == uapi::KVM_EXIT_INTERNAL_ERROR;
        set("reason", Napi::String::New(env, internal ? "internal-error" : "system-event"));
        set(internal ? "suberror" : "type", number(run_->internal.suberror));
        uint32_t count = std::min<uint32_t>(run_->internal.ndata, 16);
        Napi::Array data = Napi::Array::New(env, count);
        for (uint32_t i = 0; i < count; i++) data.Set(i, big(run_->internal.data[i]));
        set("data", data);
        break;
      }
      case uapi::KVM_EXIT_EXCEPTION:
        set("reason", Napi::String::New(env, "exception"));
        set("exception", number(run_->ex.exception));
        set("errorCode", number(run_->ex.error_code));
        break;
      default:
        set("reason", Napi::String::New(env, reason == uapi::KVM_EXIT_UNKNOWN ? "unknown" : "other"));
        set("hardwareExitReason", big(run_->hw.hardware_exit_reason));
        break;
    }
    return exit;
  }

  size_t IoLength() const {
    size_t length = static_cast<size_t>(run_->io.size) * run_->io.count;
    // KVM places the data inside the mapping; a value outside it would be a kernel bug.
    if (run_->io.data_offset > mmap_size_ || length > mmap_size_ - run_->io.data_offset) return 0;
    return length;
  }

  void CheckLastExit(Napi::Env env, uint32_t reason, const char* what) const {
    if (closed_) throw ClosedError(env);
    if (pending_) throw Napi::Error::New(env, "the vCPU is running: complete an exit only while it is stopped");
    if (run_->exit_reason != reason) throw Napi::Error::New(env, std::string("the last exit was not ") + what);
  }

  static Napi::Uint8Array BytesArg(const Napi::CallbackInfo& info, size_t index, size_t length, const char* name) {
    if (!info[index].IsTypedArray() || info[index].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
      throw ArgumentError(info.Env(), std::string(name) + " must be a Uint8Array or Buffer");
    }
    Napi::Uint8Array data = info[index].As<Napi::Uint8Array>();
    if (data.ByteLength() != length) throw ArgumentError(info.Env(), std::string(name) + " must hold exactly " + std::to_string(length) + " bytes");
    return data;
  }

  // A 64-bit register value from a safe integer (negative ones as two's complement, as a
  // guest reads -22 in rax) or a bigint.
  static uint64_t SignedU64(Napi::Value value, const char* name) {
    if (value.IsBigInt()) {
      bool lossless = false;
      int64_t signed_value = value.As<Napi::BigInt>().Int64Value(&lossless);
      if (lossless) return static_cast<uint64_t>(signed_value);
      uint64_t unsigned_value = value.As<Napi::BigInt>().Uint64Value(&lossless);
      if (lossless) return unsigned_value;
      throw ArgumentError(value.Env(), std::string(name) + " does not fit in 64 bits");
    }
    if (!value.IsNumber()) throw ArgumentError(value.Env(), std::string(name) + " must be a number or a bigint");
    double number = value.As<Napi::Number>().DoubleValue();
    if (number != static_cast<double>(static_cast<int64_t>(number)) || number > 9007199254740991.0 || number < -9007199254740991.0) {
      throw ArgumentError(value.Env(), std::string(name) + " must be a safe integer");
    }
    return static_cast<uint64_t>(static_cast<int64_t>(number));
  }

  static Napi::Error ClosedError(Napi::Env env) {
    Napi::Error error = Napi::Error::New(env, "vCPU is closed");
    error.Set("code", Napi::String::New(env, "ERR_GUESTMEM_CLOSED"));
    return error;
  }

  napi_env env_ = nullptr;
  int fd_ = -1;
  uapi::kvm_run* run_ = nullptr;
  size_t mmap_size_ = 0;
  std::thread thread_;
  std::mutex lock_;
  std::condition_variable wake_;
  bool requested_ = false;
  bool quitting_ = false;
  bool closed_ = false;
  RunDelivery delivery_;
  std::optional<Napi::Promise::Deferred> pending_;
};

// On the main thread; env is null when Node is tearing the function down.
void DeliverRun(Napi::Env env, Napi::Function, VcpuRunner* runner, RunResult* result) {
  RunResult copy = *result;
  delete result;
  if (env == nullptr || runner == nullptr) return;
  runner->Finish(env, copy);
}

}  // namespace

void InitVcpuThread(Napi::Env env, Napi::Object exports) {
  exports.Set("VcpuRunner", VcpuRunner::Define(env));
}
