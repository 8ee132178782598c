from vagent.services.stt_service.service import main

main()
