// A vCPU's KVM_RUN on a thread of its own, so that a guest that runs (or spins) never
// blocks Node's event loop. run() posts one KVM_RUN to the thread; when it returns, the
// main thread copies kvm_run's exit (and an OUT's data) into the caller's exit view and
// calls the caller's onExit, once per run. The vCPU stays stopped until JS asks for the
// next run, so an exit's handler (a conversion) finishes before the guest resumes.
// The exit is decoded in JavaScript from the view (lib/vmm/vcpu-exit.ts): under emulation
// each N-API call costs microseconds, and building the exit object here took twenty.
// stop() is QEMU's and the selftests' kick: set kvm_run.immediate_exit, then signal the
// thread, so KVM_RUN returns EINTR whether the thread is inside it or about to enter.
//
// runSync() is the other way to run: KVM_RUN on the calling thread (a vCPU's worker
// thread, as QEMU's vCPU threads call it), the exit copied into the view before it
// returns, no thread hop. Several runners (one per Node environment: the main thread's and
// a worker's) may map one vCPU; kvm_run is one page for all of them, so immediate_exit set
// through any mapping stops them all, and a process-wide registry of the threads now
// inside KVM_RUN (by vCPU fd) lets stop() on any thread signal whichever thread runs it.
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "args.h"
#include "uapi_vcpu.h"

namespace {

int KickSignal() {
  return SIGRTMIN + 5;
}

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

// Where a runner's thread is while it runs the guest. Every runner of every vCPU has one,
// listed by vCPU fd, so that a kick from any thread signals whichever thread is inside
// KVM_RUN through any runner of that vCPU. Entering and leaving KVM_RUN costs two atomic
// stores, no lock and no allocation (an exit's whole budget is a few microseconds). A slot
// joins the list when its runner is made and leaves it at shutdown, both under the lock
// the kick holds while it signals: a slot, and the thread that runs through it, cannot go
// while a kick looks at it (a runner shuts down before its thread ends).
struct RunSlot {
  int fd;
  pthread_t thread{};
  std::atomic<bool> in_run{false};
};

std::mutex& SlotsLock() {
  static std::mutex lock;
  return lock;
}

std::vector<RunSlot*>& Slots() {
  static std::vector<RunSlot*> slots;
  return slots;
}

void JoinSlots(RunSlot* slot) {
  std::lock_guard<std::mutex> guard(SlotsLock());
  Slots().push_back(slot);
}

void LeaveSlots(RunSlot* slot) {
  std::lock_guard<std::mutex> guard(SlotsLock());
  auto& slots = Slots();
  slots.erase(std::remove(slots.begin(), slots.end(), slot), slots.end());
}

// The caller has set immediate_exit: a thread that reads in_run false here has not entered
// yet, and KVM_RUN will see immediate_exit when it does (both are sequentially consistent).
void SignalRunningThreads(int fd) {
  std::lock_guard<std::mutex> guard(SlotsLock());
  for (RunSlot* slot : Slots()) {
    if (slot->fd == fd && slot->in_run.load()) pthread_kill(slot->thread, KickSignal());
  }
}

// KVM_RUN on this thread through `slot`: the thread is kickable for exactly its duration.
RunResult RunInSlot(RunSlot& slot) {
  slot.thread = pthread_self();
  slot.in_run.store(true);
  int result = ioctl(slot.fd, uapi::KVM_RUN, 0);
  int error = result < 0 ? errno : 0;
  slot.in_run.store(false);
  return RunResult{result, error};
}

// The exit view: kvm_run up to the end of its exit union, then an OUT's data.
constexpr size_t kExitHeaderBytes = offsetof(uapi::kvm_run, kvm_valid_regs);
constexpr size_t kIoDataOffset = kExitHeaderBytes;
constexpr size_t kIoDataBytes = 4096;  // KVM's PIO page: the most one exit carries
constexpr size_t kExitViewBytes = kIoDataOffset + kIoDataBytes;

class VcpuRunner;
void DeliverRun(Napi::Env env, Napi::Function onExit, VcpuRunner* runner, RunResult* result);
using RunDelivery = Napi::TypedThreadSafeFunction<VcpuRunner, RunResult, DeliverRun>;

class VcpuRunner : public Napi::ObjectWrap<VcpuRunner> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "VcpuRunner",
                       {
                           InstanceMethod<&VcpuRunner::Run>("run"),
                           InstanceMethod<&VcpuRunner::RunSync>("runSync"),
                           InstanceMethod<&VcpuRunner::Stop>("stop"),
                           InstanceMethod<&VcpuRunner::CompleteIo>("completeIo"),
                           InstanceMethod<&VcpuRunner::CompleteMmio>("completeMmio"),
                           InstanceMethod<&VcpuRunner::CompleteTdvmcall>("completeTdvmcall"),
                           InstanceMethod<&VcpuRunner::Close>("close"),
                       });
  }

  // new VcpuRunner(vcpuFd, mmapSize, exitView, onExit): maps the vCPU's kvm_run; the fd
  // stays the caller's and must outlive the runner (close() the runner first). exitView is
  // a Uint8Array of vcpuExitViewBytes; onExit(error) is called after each run.
  explicit VcpuRunner(const Napi::CallbackInfo& info) : Napi::ObjectWrap<VcpuRunner>(info) {
    Args args(info);
    fd_ = args.Fd(0);
    uint64_t size = args.U64(1, "mmapSize");
    if (size < sizeof(uapi::kvm_run) || size > (1u << 20)) throw ArgumentError(info.Env(), "mmapSize must be KVM_GET_VCPU_MMAP_SIZE's answer");
    Napi::Uint8Array view = BytesArg(info, 2, kExitViewBytes, "exitView");
    if (!info[3].IsFunction()) throw ArgumentError(info.Env(), "onExit must be a function");
    view_ = Napi::Persistent(view);
    void* address = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    if (address == MAP_FAILED) throw ErrnoError(info.Env(), errno, "mmap(kvm_run)");
    run_ = static_cast<uapi::kvm_run*>(address);
    mmap_size_ = size;
    InstallKickHandler();
    slot_.fd = fd_;
    JoinSlots(&slot_);
    delivery_ = RunDelivery::New(info.Env(), info[3].As<Napi::Function>(), "guestmem-vcpu", 0, 1, this);
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

  // Called on the main thread when a KVM_RUN returns: the exit goes into the view, then
  // to onExit (an error object instead when the run failed or the runner closed).
  void Finish(Napi::Env env, Napi::Function onExit, RunResult result) {
    running_ = false;
    if (!closed_) delivery_.Unref(env);
    Napi::Value error = closed_ ? ClosedError(env).Value() : Outcome(env, result);
    // Unref last: the call may drop JS's last reference to this runner.
    onExit.Call({error});
    Unref();
  }

 private:
  // run([hypercallReturn]): the next KVM_RUN. A hypercall's return value, when given, is
  // written first (the guest finds it in rax; since KVM's 2024 rework the VMM must always
  // write it): one crossing per exit instead of two.
  Napi::Value Run(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    PrepareRun(info);
    if (!thread_.joinable()) thread_ = std::thread(&VcpuRunner::ThreadMain, this);
    running_ = true;
    // The runner must live until the result is delivered, whatever JS drops meanwhile.
    Ref();
    delivery_.Ref(env);
    {
      std::lock_guard<std::mutex> guard(lock_);
      requested_ = true;
    }
    wake_.notify_one();
    return env.Undefined();
  }

  // runSync([hypercallReturn]): KVM_RUN on the calling thread; the exit is in the view when
  // it returns, or it throws the run's error. The thread is registered for kicks while it
  // is inside KVM_RUN, so stop() from any thread (through any runner of this vCPU) ends it.
  Napi::Value RunSync(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    PrepareRun(info);
    running_ = true;
    RunResult result = RunInSlot(slot_);
    running_ = false;
    Napi::Value error = Outcome(env, result);
    if (!error.IsUndefined()) throw Napi::Error(env, error);
    return env.Undefined();
  }

  // Both ways to run: refuse a closed or busy runner, then write the hypercall's answer.
  void PrepareRun(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed_) throw ClosedError(env);
    if (running_) throw BusyError(env);
    if (info.Length() > 0 && !info[0].IsUndefined()) {
      if (run_->exit_reason != uapi::KVM_EXIT_HYPERCALL) throw Napi::Error::New(env, "the last exit was not a hypercall");
      run_->hypercall.ret = SignedU64(info[0], "hypercallReturn");
    }
  }

  // A KVM_RUN's result: undefined with the exit copied into the view, or the error.
  Napi::Value Outcome(Napi::Env env, RunResult result) {
    // KVM reports a memory fault as -EFAULT with the exit filled in: that is an exit.
    if (result.result < 0 && result.error != EINTR && !(result.error == EFAULT && run_->exit_reason == uapi::KVM_EXIT_MEMORY_FAULT)) {
      return ErrnoError(env, result.error, "ioctl(KVM_RUN)").Value();
    }
    CopyExit(result.result < 0 && result.error == EINTR);
    return env.Undefined();
  }

  // Sticky: every later KVM_RUN returns EINTR at once.
  Napi::Value Stop(const Napi::CallbackInfo& info) {
    Kick();
    return info.Env().Undefined();
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

  // completeTdvmcall(status): the TDVMCALL status a KVM_EXIT_TDX is answered with (a u64
  // bigint); KVM copies it to the TD's R10 on the next KVM_RUN.
  Napi::Value CompleteTdvmcall(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CheckLastExit(env, uapi::KVM_EXIT_TDX, "a TDVMCALL (KVM_EXIT_TDX)");
    if (!info[0].IsBigInt()) throw ArgumentError(env, "status must be a bigint");
    bool lossless = false;
    uint64_t status = info[0].As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) throw ArgumentError(env, "status must fit in 64 bits unsigned");
    run_->tdx.unknown.ret = status;
    return env.Undefined();
  }

  // Stops the thread (kicking it out of KVM_RUN), joins it and unmaps kvm_run. A run in
  // flight ends with ERR_GUESTMEM_CLOSED when its result arrives.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (!closed_) {
      Shutdown();
      napi_remove_env_cleanup_hook(env_, &VcpuRunner::AtEnvExit, this);
      // A run posted but never taken (the thread saw the quit first) delivers nothing:
      // drop the reference it holds (JS settles its promise itself on close).
      if (running_ && requested_) {
        running_ = false;
        Unref();
      }
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
      // One run in flight at a time: the result needs no allocation.
      outcome_ = RunInSlot(slot_);
      if (delivery_.BlockingCall(&outcome_) != napi_ok) return;
    }
  }

  void Kick() {
    if (run_ == nullptr) return;
    __atomic_store_n(&run_->immediate_exit, 1, __ATOMIC_SEQ_CST);
    SignalRunningThreads(fd_);
  }

  void Shutdown() {
    if (closed_) return;
    closed_ = true;
    {
      std::lock_guard<std::mutex> guard(lock_);
      quitting_ = true;
    }
    wake_.notify_one();
    // Only this runner's own thread is stopped: immediate_exit is the vCPU's, shared by
    // every runner of it, and a worker's runner that closes after its last runSync must
    // not stop the vCPU for the main thread's.
    if (thread_.joinable()) {
      Kick();
      thread_.join();
    }
    LeaveSlots(&slot_);
    delivery_.Release();
    munmap(run_, mmap_size_);
    run_ = nullptr;
    view_.Reset();
  }

  // kvm_run's exit into the view; an interrupted run reads as KVM_EXIT_INTR.
  void CopyExit(bool interrupted) {
    Napi::Uint8Array view = view_.Value();
    uint8_t* bytes = view.Data();
    std::memcpy(bytes, run_, kExitHeaderBytes);
    if (interrupted) {
      uint32_t reason = uapi::KVM_EXIT_INTR;
      std::memcpy(bytes + offsetof(uapi::kvm_run, exit_reason), &reason, sizeof reason);
    } else if (run_->exit_reason == uapi::KVM_EXIT_IO && run_->io.direction == uapi::KVM_EXIT_IO_OUT) {
      std::memcpy(bytes + kIoDataOffset, reinterpret_cast<uint8_t*>(run_) + run_->io.data_offset, std::min(IoLength(), kIoDataBytes));
    }
  }

  size_t IoLength() const {
    size_t length = static_cast<size_t>(run_->io.size) * run_->io.count;
    // KVM places the data inside the mapping; a value outside it would be a kernel bug.
    if (run_->io.data_offset > mmap_size_ || length > mmap_size_ - run_->io.data_offset) return 0;
    return length;
  }

  void CheckLastExit(Napi::Env env, uint32_t reason, const char* what) const {
    if (closed_) throw ClosedError(env);
    if (running_) throw Napi::Error::New(env, "the vCPU is running: complete an exit only while it is stopped");
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

  static Napi::Error BusyError(Napi::Env env) {
    Napi::Error error = Napi::Error::New(env, "a KVM_RUN of this vCPU is already in flight");
    error.Set("code", Napi::String::New(env, "ERR_GUESTMEM_BUSY"));
    return error;
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
  bool running_ = false;
  RunResult outcome_{0, 0};
  RunSlot slot_;
  Napi::Reference<Napi::Uint8Array> view_;
  RunDelivery delivery_;
};

// On the main thread; env is null when Node is tearing the function down.
void DeliverRun(Napi::Env env, Napi::Function onExit, VcpuRunner* runner, RunResult* result) {
  if (env == nullptr || runner == nullptr) return;
  runner->Finish(env, onExit, *result);
}

}  // namespace

void InitVcpuThread(Napi::Env env, Napi::Object exports) {
  exports.Set("VcpuRunner", VcpuRunner::Define(env));
  exports.Set("vcpuExitViewBytes", Napi::Number::New(env, kExitViewBytes));
  // Where lib/vmm/vcpu-exit.ts reads each field of the view: the compiler's offsets, so
  // the decoder is checked against the same struct that uapi_vcpu.h pins.
  Napi::Object layout = Napi::Object::New(env);
  auto at = [&](const char* name, size_t offset) { layout.Set(name, Napi::Number::New(env, offset)); };
  at("exitReason", offsetof(uapi::kvm_run, exit_reason));
  at("ioDirection", offsetof(uapi::kvm_run, io.direction));
  at("ioSize", offsetof(uapi::kvm_run, io.size));
  at("ioPort", offsetof(uapi::kvm_run, io.port));
  at("ioCount", offsetof(uapi::kvm_run, io.count));
  at("ioData", kIoDataOffset);
  at("mmioAddress", offsetof(uapi::kvm_run, mmio.phys_addr));
  at("mmioData", offsetof(uapi::kvm_run, mmio.data));
  at("mmioLength", offsetof(uapi::kvm_run, mmio.len));
  at("mmioIsWrite", offsetof(uapi::kvm_run, mmio.is_write));
  at("hypercallNr", offsetof(uapi::kvm_run, hypercall.nr));
  at("hypercallArgs", offsetof(uapi::kvm_run, hypercall.args));
  at("hypercallFlags", offsetof(uapi::kvm_run, hypercall.flags));
  at("memoryFaultFlags", offsetof(uapi::kvm_run, memory_fault.flags));
  at("memoryFaultGpa", offsetof(uapi::kvm_run, memory_fault.gpa));
  at("memoryFaultSize", offsetof(uapi::kvm_run, memory_fault.size));
  at("tdxFlags", offsetof(uapi::kvm_run, tdx.flags));
  at("tdxNr", offsetof(uapi::kvm_run, tdx.nr));
  at("tdxRet", offsetof(uapi::kvm_run, tdx.unknown.ret));
  at("tdxData", offsetof(uapi::kvm_run, tdx.unknown.data));
  at("failEntryReason", offsetof(uapi::kvm_run, fail_entry.hardware_entry_failure_reason));
  at("failEntryCpu", offsetof(uapi::kvm_run, fail_entry.cpu));
  at("internalSuberror", offsetof(uapi::kvm_run, internal.suberror));
  at("internalNdata", offsetof(uapi::kvm_run, internal.ndata));
  at("internalData", offsetof(uapi::kvm_run, internal.data));
  at("exception", offsetof(uapi::kvm_run, ex.exception));
  at("exceptionErrorCode", offsetof(uapi::kvm_run, ex.error_code));
  at("hardwareExitReason", offsetof(uapi::kvm_run, hw.hardware_exit_reason));
  exports.Set("kvmRunLayout", layout);
}
