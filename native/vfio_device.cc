// A VFIO device: its fd from the group or its cdev bound to iommufd, its info and regions.
// Region reads and writes are plain pread/pwrite at the region offset (Node's fs does them).
#include "args.h"
#include "uapi.h"

namespace {

Napi::Value GroupGetDeviceFd(const Napi::CallbackInfo& info) {
  Args args(info);
  std::string name = args.String(1, "device");
  // The kernel returns the device fd with O_CLOEXEC set.
  int fd = RetryIoctl(args.Fd(0), uapi::VFIO_GROUP_GET_DEVICE_FD, const_cast<char*>(name.c_str()));
  if (fd < 0) throw ErrnoError(info.Env(), errno, "ioctl(VFIO_GROUP_GET_DEVICE_FD)");
  return Napi::Number::New(info.Env(), fd);
}

Napi::Value DeviceGetInfo(const Napi::CallbackInfo& info) {
  Args args(info);
  uapi::vfio_device_info request{};
  request.argsz = sizeof(request);
  if (RetryIoctl(args.Fd(0), uapi::VFIO_DEVICE_GET_INFO, &request) < 0) {
    throw ErrnoError(info.Env(), errno, "ioctl(VFIO_DEVICE_GET_INFO)");
  }
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  out.Set("flags", Napi::Number::New(env, request.flags));
  out.Set("numRegions", Napi::Number::New(env, request.num_regions));
  out.Set("numIrqs", Napi::Number::New(env, request.num_irqs));
  return out;
}

Napi::Value DeviceGetRegionInfo(const Napi::CallbackInfo& info) {
  Args args(info);
  uapi::vfio_region_info request{};
  request.argsz = sizeof(request);
  request.index = args.U32(1, "index");
  if (RetryIoctl(args.Fd(0), uapi::VFIO_DEVICE_GET_REGION_INFO, &request) < 0) {
    throw ErrnoError(info.Env(), errno, "ioctl(VFIO_DEVICE_GET_REGION_INFO)");
  }
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  out.Set("index", Napi::Number::New(env, request.index));
  out.Set("flags", Napi::Number::New(env, request.flags));
  out.Set("size", U64Value(env, request.size));
  out.Set("offset", U64Value(env, request.offset));
  return out;
}

Napi::Value BindIommufd(const Napi::CallbackInfo& info) {
  Args args(info);
  uapi::vfio_device_bind_iommufd request{};
  request.argsz = sizeof(request);
  request.iommufd = args.Fd(1);
  if (RetryIoctl(args.Fd(0), uapi::VFIO_DEVICE_BIND_IOMMUFD, &request) < 0) {
    throw ErrnoError(info.Env(), errno, "ioctl(VFIO_DEVICE_BIND_IOMMUFD)");
  }
  return Napi::Number::New(info.Env(), request.out_devid);
}

Napi::Value AttachIommufdPt(const Napi::CallbackInfo& info) {
  Args args(info);
  uapi::vfio_device_attach_iommufd_pt request{};
  request.argsz = sizeof(request);
  request.pt_id = args.U32(1, "ptId");
  if (RetryIoctl(args.Fd(0), uapi::VFIO_DEVICE_ATTACH_IOMMUFD_PT, &request) < 0) {
    throw ErrnoError(info.Env(), errno, "ioctl(VFIO_DEVICE_ATTACH_IOMMUFD_PT)");
  }
  return info.Env().Undefined();
}

}  // namespace

void InitVfioDevice(Napi::Env env, Napi::Object exports) {
  exports.Set("vfioGroupGetDeviceFd", Napi::Function::New(env, GroupGetDeviceFd));
  exports.Set("vfioDeviceGetInfo", Napi::Function::New(env, DeviceGetInfo));
  exports.Set("vfioDeviceGetRegionInfo", Napi::Function::New(env, DeviceGetRegionInfo));
  exports.Set("vfioDeviceBindIommufd", Napi::Function::New(env, BindIommufd));
  exports.Set("vfioDeviceAttachIommufdPt", Napi::Function::New(env, AttachIommufdPt));
}
