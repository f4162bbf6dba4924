/*
 * processprng-shim.c -- minimal stand-in for bcryptprimitives.dll under Wine.
 *
 * Why this exists: Rust's std (x86_64-pc-windows-gnu, 1.78+) fills its random
 * buffers (HashMap's RandomState, etc.) with ProcessPrng, imported statically
 * from bcryptprimitives.dll.  Wine 8.0 ships no bcryptprimitives.dll, so every
 * Rust test executable fails to load under Wine.  scripts/test-windows.sh
 * builds this file with MinGW and drops it into the throw-away Wine prefix's
 * system32 as bcryptprimitives.dll.  It is test infrastructure only and is
 * never shipped.
 *
 * ProcessPrng is implemented on top of RtlGenRandom (advapi32's
 * SystemFunction036), which Wine does provide.  RtlGenRandom takes a ULONG
 * length, so large requests are served in chunks.  Like the real one, it
 * always returns TRUE.
 *
 * Build (no C runtime, so the DLL only imports kernel32 and advapi32):
 *   x86_64-w64-mingw32-gcc -shared -O2 -s -nostdlib -Wl,--entry,DllMain \
 *       -o bcryptprimitives.dll processprng-shim.c processprng-shim.def \
 *       -ladvapi32 -lkernel32
 */
#include <windows.h>

/* RtlGenRandom is exported by advapi32 under the name SystemFunction036. */
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x10000000u ? 0x10000000u : (ULONG)len;
        if (!SystemFunction036(data, chunk)) {
            /* The real ProcessPrng cannot fail; neither may we return
             * garbage silently.  Abort loudly instead. */
            RaiseException(0xE0000001u, EXCEPTION_NONCONTINUABLE, 0, NULL);
        }
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}

BOOL WINAPI DllMain(HINSTANCE inst, DWORD reason, LPVOID reserved)
{
    (void)inst; (void)reason; (void)reserved;
    return TRUE;
}
