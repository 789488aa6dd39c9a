// The addon's entry point: each kernel object family registers its functions.
#include <napi.h>

void InitKvm(Napi::Env env, Napi::Object exports);
void InitConfidentialVm(Napi::Env env, Napi::Object exports);
void InitConfidentialLaunch(Napi::Env env, Napi::Object exports);
void InitMemory(Napi::Env env, Napi::Object exports);
void InitMapping(Napi::Env env, Napi::Object exports);
void InitVfioType1(Napi::Env env, Napi::Object exports);
void InitIommufd(Napi::Env env, Napi::Object exports);
void InitVfioDevice(Napi::Env env, Napi::Object exports);
void InitVcpu(Napi::Env env, Napi::Object exports);
void InitVcpuThread(Napi::Env env, Napi::Object exports);
void InitFaultInjection(Napi::Env env, Napi::Object exports);

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InitKvm(env, exports);
  InitConfidentialVm(env, exports);
  InitConfidentialLaunch(env, exports);
  InitMemory(env, exports);
  InitMapping(env, exports);
  InitVfioType1(env, exports);
  InitIommufd(env, exports);
  InitVfioDevice(env, exports);
  InitVcpu(env, exports);
  InitVcpuThread(env, exports);
  InitFaultInjection(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(guestmem, Init)
