// Host mappings (mmap of a memfd or of a VFIO region) and the windows JavaScript reaches
// them through. A mapping is never wrapped whole: Node 20 cannot make an ArrayBuffer past
// 4 GiB, and when it refused one, Node and node-addon-api each freed the finalizer data
// (a double free that aborted the process). The mapping's address is what KVM and VFIO
// need; JS gets windows: ArrayBuffers over a part of it, each at most kMaxWindow bytes.
//
// Lifetime: a mapping holds one reference for its owner (a JS External) and one per live
// window, and is unmapped when the last goes, so no window can outlive the memory it
// shows. An explicit unmap (closing guest memory; a VFIO cdev bind is EBUSY while a BAR
// is mapped) detaches every live window, then lets go of the fd's pages at once: munmap
// if no window is left, else an anonymous placeholder mapped over the same addresses, so
// that a window whose finalizer has not run yet still points at memory of this process.
#include <sys/mman.h>

#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "args.h"

namespace {

// Node 20's buffer.constants.MAX_LENGTH (v8::TypedArray::kMaxLength on 64-bit); later
// Nodes allow more, none less. A longer window is refused before V8 is asked.
constexpr uint64_t kMaxWindow = uint64_t{1} << 32;

struct Mapping {
  Mapping(uint8_t* address_, size_t length_) : address(address_), length(length_) {}
  uint8_t* address;
  size_t length;
  // False after an explicit unmap: the fd's pages are gone, no new window may be made.
  bool mapped = true;
  // True once the addresses are unmapped (no placeholder left to unmap at the end).
  bool released = false;
  // Memory someone else mapped and will unmap (an embedding VMM's guest RAM): never
  // munmapped nor replaced by a placeholder here; an unmap only empties the windows.
  bool borrowed = false;
  // The owner's reference plus one per window not yet finalized.
  size_t references = 1;
  // Window id -> weak reference to its ArrayBuffer, to detach on an explicit unmap.
  std::unordered_map<uint64_t, napi_ref> windows;
};

// Windows are named by id, not by pointer, in their finalizer hint: Node may run a
// finalizer on a failed create (it did for too-large buffers), and an id can be looked up
// safely whether or not that happened.
std::mutex registry_lock;
std::unordered_map<uint64_t, Mapping*> window_mappings;
uint64_t next_window_id = 1;

// An arbitrary 128-bit tag that marks our Externals, so a foreign External is refused.
const napi_type_tag kMappingTag = {0x6775657374606d65ULL, 0x6d6d617070696e67ULL};

/** Drops one reference; the last one unmaps (if still mapped) and frees the record. */
void Unreference(Mapping* mapping) {
  bool last;
  {
    std::lock_guard<std::mutex> guard(registry_lock);
    last = --mapping->references == 0;
  }
  if (!last) return;
  if (!mapping->released && !mapping->borrowed) munmap(mapping->address, mapping->length);
  delete mapping;
}

/** Forgets a window, once; returns its weak reference (null if none was made). */
napi_ref ForgetWindow(uint64_t id, Mapping** owner) {
  std::lock_guard<std::mutex> guard(registry_lock);
  auto it = window_mappings.find(id);
  if (it == window_mappings.end()) return nullptr;
  Mapping* mapping = it->second;
  window_mappings.erase(it);
  napi_ref ref = nullptr;
  auto window = mapping->windows.find(id);
  if (window != mapping->windows.end()) {
    ref = window->second;
    mapping->windows.erase(window);
  }
  *owner = mapping;
  return ref;
}

void FinalizeWindow(napi_env env, void*, void* hint) {
  Mapping* mapping = nullptr;
  napi_ref ref = ForgetWindow(reinterpret_cast<uint64_t>(hint), &mapping);
  if (ref != nullptr) napi_delete_reference(env, ref);
  if (mapping != nullptr) Unreference(mapping);
}

void FinalizeOwner(napi_env, void* data, void*) {
  Unreference(static_cast<Mapping*>(data));
}

Napi::Error RangeErrorOf(Napi::Env env, const std::string& message) {
  Napi::RangeError error = Napi::RangeError::New(env, message);
  error.Set("code", Napi::String::New(env, "ERR_OUT_OF_RANGE"));
  return error;
}

Mapping* MappingOf(const Napi::CallbackInfo& info, size_t index) {
  napi_env env = info.Env();
  napi_value value = info[index];
  napi_valuetype type;
  bool tagged = false;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_external ||
      napi_check_object_type_tag(env, value, &kMappingTag, &tagged) != napi_ok || !tagged) {
    throw ArgumentError(info.Env(), "mapping must be a handle returned by mmap");
  }
  void* data = nullptr;
  if (napi_get_value_external(env, value, &data) != napi_ok) throw Napi::Error::New(info.Env());
  return static_cast<Mapping*>(data);
}

Napi::Value Mmap(const Napi::CallbackInfo& info) {
  Args args(info);
  Napi::Env env = info.Env();
  int fd = args.Fd(0);
  uint64_t length = args.U64(1, "length");
  uint64_t offset = args.U64(2, "offset");
  bool writable = info[3].ToBoolean();
  if (length == 0) throw RangeErrorOf(env, "length must be greater than zero");
  if (length > static_cast<uint64_t>(INT64_MAX) || offset > static_cast<uint64_t>(INT64_MAX)) {
    throw RangeErrorOf(env, "length and offset must be below 2^63");
  }
  int prot = PROT_READ | (writable ? PROT_WRITE : 0);
  void* address = mmap(nullptr, length, prot, MAP_SHARED, fd, static_cast<off_t>(offset));
  if (address == MAP_FAILED) throw ErrnoError(env, errno, "mmap");
  auto* mapping = new Mapping(static_cast<uint8_t*>(address), static_cast<size_t>(length));
  napi_value handle;
  if (napi_create_external(env, mapping, FinalizeOwner, nullptr, &handle) != napi_ok) {
    munmap(address, length);
    delete mapping;
    throw Napi::Error::New(env);
  }
  // From here the External owns the mapping: its finalizer releases it.
  if (napi_type_tag_object(env, handle, &kMappingTag) != napi_ok) throw Napi::Error::New(env);
  Napi::Object result = Napi::Object::New(env);
  result.Set("handle", Napi::Value(env, handle));
  result.Set("address", U64Value(env, reinterpret_cast<uint64_t>(address)));
  return result;
}

/**
 * A handle over memory this process already has mapped (an embedding VMM's guest RAM),
 * so that windows can be made over it as over our own mappings. `owned`: munmap it when
 * the handle goes (else it is borrowed and never unmapped here). The TS side checks first
 * that the range is mapped read-write (lib/common/mapping-guard.ts).
 */
Napi::Value AdoptMapping(const Napi::CallbackInfo& info) {
  Args args(info);
  Napi::Env env = info.Env();
  uint64_t address = args.U64(0, "address");
  uint64_t length = args.U64(1, "length");
  bool owned = info[2].ToBoolean();
  if (length == 0) throw RangeErrorOf(env, "length must be greater than zero");
  if (address == 0 || address % 4096 != 0 || length > UINT64_MAX - address)
    throw RangeErrorOf(env, "address must be a non-zero page-aligned address, and address + length must not wrap");
  auto* mapping = new Mapping(reinterpret_cast<uint8_t*>(address), static_cast<size_t>(length));
  mapping->borrowed = !owned;
  napi_value handle;
  if (napi_create_external(env, mapping, FinalizeOwner, nullptr, &handle) != napi_ok) {
    delete mapping;
    throw Napi::Error::New(env);
  }
  if (napi_type_tag_object(env, handle, &kMappingTag) != napi_ok) throw Napi::Error::New(env);
  Napi::Object result = Napi::Object::New(env);
  result.Set("handle", Napi::Value(env, handle));
  result.Set("address", U64Value(env, address));
  return result;
}

/** An ArrayBuffer over [offset, offset + length) of a mapping, holding it mapped. */
Napi::Value MapWindow(const Napi::CallbackInfo& info) {
  Args args(info);
  Napi::Env env = info.Env();
  Mapping* mapping = MappingOf(info, 0);
  uint64_t offset = args.U64(1, "offset");
  uint64_t length = args.U64(2, "length");
  if (!mapping->mapped) {
    Napi::Error error = Napi::Error::New(env, "the mapping was unmapped");
    error.Set("code", Napi::String::New(env, "ERR_GUESTMEM_CLOSED"));
    throw error;
  }
  if (length == 0 || length > kMaxWindow) {
    throw RangeErrorOf(env, "a window must be 1 to " + std::to_string(kMaxWindow) + " bytes, got " + std::to_string(length));
  }
  if (offset > mapping->length || length > mapping->length - offset) {
    throw RangeErrorOf(env, "window [" + std::to_string(offset) + ", +" + std::to_string(length) + ") is outside the " +
                                std::to_string(mapping->length) + "-byte mapping");
  }
  uint64_t id;
  {
    std::lock_guard<std::mutex> guard(registry_lock);
    id = next_window_id++;
    window_mappings[id] = mapping;
    mapping->references++;
  }
  napi_value buffer;
  napi_status status = napi_create_external_arraybuffer(env, mapping->address + offset, length, FinalizeWindow, reinterpret_cast<void*>(id), &buffer);
  if (status != napi_ok) {
    Napi::Error error = Napi::Error::New(env);
    Mapping* owner = nullptr;
    ForgetWindow(id, &owner);  // a no-op if Node already finalized the window
    if (owner != nullptr) Unreference(owner);
    throw error;
  }
  napi_ref ref;
  if (napi_create_reference(env, buffer, 0, &ref) == napi_ok) {
    std::lock_guard<std::mutex> guard(registry_lock);
    if (window_mappings.count(id) != 0) mapping->windows[id] = ref;
    else napi_delete_reference(env, ref);
  }
  return Napi::Value(env, buffer);
}

/**
 * Unmaps now: detaches every live window (they read as empty), then releases the fd's
 * pages (see the top of this file). Idempotent.
 */
Napi::Value Munmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Mapping* mapping = MappingOf(info, 0);
  if (!mapping->mapped) return env.Undefined();
  std::vector<napi_ref> windows;
  {
    std::lock_guard<std::mutex> guard(registry_lock);
    for (const auto& [id, ref] : mapping->windows) windows.push_back(ref);
  }
  for (napi_ref ref : windows) {
    napi_value buffer = nullptr;
    bool detached = true;
    if (napi_get_reference_value(env, ref, &buffer) != napi_ok || buffer == nullptr) continue;
    if (napi_is_detached_arraybuffer(env, buffer, &detached) == napi_ok && !detached) napi_detach_arraybuffer(env, buffer);
  }
  std::lock_guard<std::mutex> guard(registry_lock);
  if (mapping->borrowed) {
    // Not ours: its owner unmaps it. The windows are detached, so JS can no longer reach it.
    mapping->mapped = false;
    mapping->released = true;
    return env.Undefined();
  }
  if (mapping->references == 1) {
    if (munmap(mapping->address, mapping->length) < 0) throw ErrnoError(env, errno, "munmap");
    mapping->released = true;
  } else {
    // Detached windows are finalized later; until then their addresses stay ours.
    void* placeholder =
        mmap(mapping->address, mapping->length, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (placeholder == MAP_FAILED) throw ErrnoError(env, errno, "mmap(MAP_FIXED placeholder)");
  }
  mapping->mapped = false;
  return env.Undefined();
}

}  // namespace

void InitMapping(Napi::Env env, Napi::Object exports) {
  exports.Set("mmap", Napi::Function::New(env, Mmap));
  exports.Set("adoptMapping", Napi::Function::New(env, AdoptMapping));
  exports.Set("mapWindow", Napi::Function::New(env, MapWindow));
  exports.Set("munmap", Napi::Function::New(env, Munmap));
  exports.Set("maxWindow", Napi::Number::New(env, static_cast<double>(kMaxWindow)));
}
