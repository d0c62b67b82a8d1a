/* A test-only stand-in for Windows' bcryptprimitives.dll, for Wine 8.0, which lacks it:
   Rust's std (1.78+) asks ProcessPrng for randomness. Real Windows has the DLL. */
#include <windows.h>
#include <bcrypt.h>

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG part = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (BCryptGenRandom(NULL, data, part, BCRYPT_USE_SYSTEM_PREFERRED_RNG) != 0)
            return FALSE;
        data += part;
        len -= part;
    }
    return TRUE;
}
